"""ivh-approvals: approve or reject Tencent IVH customization demos from Slack."""
