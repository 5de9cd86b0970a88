"""Deciding a round: who may, one decision per round, the call to Tencent, the truth after."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot import messages
from bot.approvers import Approvers
from bot.events import snapshot_of
from bot.ivh import IvhClient, IvhError
from bot.model import REASON_MAX, Claim, Decision, Loaded, Operate, Phase, Snapshot
from bot.slack import Busy, Thread
from bot.store import Store

log = logging.getLogger(__name__)

CLAIM_TTL = 120.0  # longer than a confirmation call can take; a dead claimer's claim expires
Notify = Callable[[str], Awaitable[None]]
SELF_APPROVAL = (
    "You tracked this task, so another approver must approve it (PREVENT_SELF_APPROVAL is on)."
    " You may still reject it."
)


def clean_reason(text: str) -> str:
    """The reason as sent to Tencent: control characters out, white space trimmed."""
    kept = "".join(ch if ch.isprintable() or ch == "\n" else " " for ch in text)
    return kept.strip()


def reason_problem(text: str) -> str | None:
    """Why a reason cannot be sent, in words for the modal; None when it can."""
    reason = clean_reason(text)
    if not reason:
        return "Please say why the demo is rejected."
    if len(reason) > REASON_MAX:
        return f"At most {REASON_MAX} characters, please ({len(reason)} now)."
    return None


# m:ss or h:mm:ss (0:12, 12:05, 1:02:03): where in the demo the problem is.
_TIMECODE = re.compile(r"(?:(?P<h>\d{1,2}):(?P<hm>[0-5]\d)|(?P<m>\d{1,2})):(?P<s>[0-5]\d)")


@dataclass(frozen=True)
class RejectForm:
    """What the Reject form holds: a category (None on a form opened before categories
    existed), an optional timecode, and the reason in words."""

    category: str | None
    timecode: str
    reason: str

    @property
    def prefix(self) -> str:
        """What precedes the reason: `[Lip sync @0:12] `, `[Lip sync] `, or nothing."""
        if self.category is None:
            return ""
        timecode = self.timecode.strip()
        return f"[{self.category} @{timecode}] " if timecode else f"[{self.category}] "

    @property
    def text(self) -> str:
        """The reason as Tencent receives it: `[Lip sync @0:12] mouth drifts after the pause`."""
        return self.prefix + clean_reason(self.reason)

    def problems(self, categories: list[str]) -> dict[str, str]:
        """What is wrong, by the form's block id, in words for the modal; empty when nothing."""
        found: dict[str, str] = {}
        if self.category is not None and self.category not in categories:
            found[messages.CATEGORY_BLOCK] = (
                "Pick a category." if not self.category else "Pick one of the categories offered."
            )
        timecode = self.timecode.strip()
        if timecode and _TIMECODE.fullmatch(timecode) is None:
            found[messages.TIMECODE_BLOCK] = "Give it as m:ss or h:mm:ss, e.g. 0:12 or 1:02:03."
        problem = reason_problem(self.reason)
        if problem is None and len(self.text) > REASON_MAX:
            room, typed = REASON_MAX - len(self.prefix), len(clean_reason(self.reason))
            problem = (
                f'Tencent takes {REASON_MAX} characters in all, "{self.prefix.strip()}" included:'
                f" at most {room} here, please ({typed} now)."
            )
        if problem is not None:
            found[messages.REASON_BLOCK] = problem
        return found


def round_refusal(loaded: Loaded | None, round_: int) -> str | None:
    """Why nobody can decide `round_` of the task as loaded, or None."""
    if loaded is None:
        return "I don't track this task (any more)."
    _, view = loaded
    if round_ != view.round:
        return f"This button belongs to round {round_}; round {view.round} is current."
    if view.current_decision is not None:
        return f"This round is closed: {messages.fallback_text(view)}."
    if view.phase != Phase.PENDING:
        return "This task is not waiting for a decision."
    return None


class Decider:
    def __init__(
        self,
        store: Store,
        ivh: IvhClient,
        thread: Thread,
        approvers: Approvers,
        *,
        claim_ttl: float = CLAIM_TTL,
        prevent_self_approval: bool = False,
        required_approvals: int = 1,
        reject_categories: list[str] | None = None,
    ) -> None:
        self.reject_categories = list(reject_categories or [])
        self._claim_ttl = claim_ttl
        self._required = required_approvals
        self._prevent_self_approval = prevent_self_approval
        self._store = store
        self._ivh = ivh
        self._thread = thread
        self._approvers = approvers

    async def refusal(self, task_id: str, round_: int, user: str) -> str | None:
        """Why `user` cannot decide this round now, or None. Button values are untrusted."""
        loaded = await self._store.view(task_id)
        return round_refusal(loaded, round_) or await self._user_refusal(user)

    async def _user_refusal(self, user: str) -> str | None:
        if not await self._approvers.allows(user):
            return f"Only approvers can decide ({self._approvers.describe()})."
        return None

    async def _self_refusal(self, task_id: str, user: str, operate: Operate) -> str | None:
        """With PREVENT_SELF_APPROVAL, whoever tracked the task may reject it, not approve it."""
        if not self._prevent_self_approval or operate != "AGREE":
            return None
        record = await self._store.get(task_id)
        if record is None or record.tracked_by != user:
            return None
        return SELF_APPROVAL

    async def decide(
        self,
        task_id: str,
        round_: int,
        user: str,
        operate: Operate,
        notify: Notify,
        reason: str = "",
        category: str | None = None,
    ) -> None:
        """Claim the round, send the decision once, and show the outcome (or why not)."""
        # Before the claim: it would block approvers.
        refusal = await self._user_refusal(user) or await self._self_refusal(task_id, user, operate)
        if refusal:
            await notify(refusal)
            return
        approvers: list[str] = []
        if operate == "AGREE" and self._required > 1:
            quorum = await self._vote(task_id, round_, user, notify)
            if quorum is None:
                return
            approvers = quorum
        claim = Claim(
            user=user,
            operate=operate,
            at=time.time(),
            token=uuid.uuid4().hex,
            reason=reason,
            approvers=approvers,
            category=category,
        )
        holder, loaded = await self._store.claim(task_id, round_, claim, self._claim_ttl)
        if holder is not None:
            verb = "approved" if holder.operate == "AGREE" else "rejected"
            await notify(f"Already being {verb} by {messages.who(holder.user)}.")
            return
        # The task as read right after the claim was taken, in the same round trip: a decision
        # recorded before it (by another replica, whose claim is gone) closes the round, and
        # none can be recorded while we hold it.
        refusal = round_refusal(loaded, round_)
        if refusal:
            await self._store.release(task_id, round_, claim.token)
            await notify(refusal)
            return
        outcome = _Outcome(keep_claim=False)
        seen = loaded.record.snapshot if loaded is not None else None
        try:
            outcome = await self._send(task_id, round_, claim, seen)
        finally:
            # A recorded decision closes the round for good; the claim only guards the call,
            # unless nobody knows yet whether the call took effect.
            if not outcome.keep_claim:
                await self._store.release(task_id, round_, claim.token)
        if outcome.text:
            await notify(outcome.text)
            record = await self._store.get(task_id)
            if outcome.in_thread and record is not None:
                await self._thread.reply(record, {"text": outcome.text})

    async def _vote(self, task_id: str, round_: int, user: str, notify: Notify) -> list[str] | None:
        """Count `user`'s approval; the approvers once the quorum is reached (the caller then
        sends AGREE under the round's claim, as a single approval would), else None."""
        refusal = round_refusal(await self._store.view(task_id), round_)
        if refusal:
            await notify(refusal)
            return None
        votes, added = await self._store.vote(task_id, round_, user, self._required)
        given, required = len(votes.users), self._required
        if given >= required:
            # The approval that completes the quorum, or a later click after the final call
            # failed: the claim lets one of them through, and a recorded decision none.
            return votes.users
        await self._thread.refresh(task_id)
        if added:
            await notify(
                f"Your approval is counted: {given} of {required}. The demo is accepted when"
                f" {required} approvers have approved it."
            )
        else:
            await notify(
                f"You have approved round {round_} already ({given} of {required});"
                " your approval counts once."
            )
        return None

    async def _send(
        self, task_id: str, round_: int, claim: Claim, seen: Snapshot | None
    ) -> _Outcome:
        operate: Operate = "AGREE" if claim.operate == "AGREE" else "REJECT"
        try:
            request_id = await self._ivh.customer_confirm(task_id, operate, claim.reason or None)
        except IvhError as error:
            return await self._after_error(task_id, round_, claim, error, seen)
        log.info(
            "task %s round %d: %s by %s (%s)", task_id, round_, operate, claim.user, request_id
        )
        await self.record(task_id, round_, claim, request_id)
        return _Outcome()

    async def record(self, task_id: str, round_: int, claim: Claim, request_id: str) -> None:
        """Record what the claim's holder decided, then show it in the message and thread."""
        try:
            await self._thread.announce(task_id, decision_from(claim, round_, request_id))
        except Busy as busy:
            # Recorded; another process is showing it, and the publisher finishes the rest.
            log.info("task %s round %d: %s", task_id, round_, busy)

    async def _after_error(
        self, task_id: str, round_: int, claim: Claim, error: IvhError, seen: Snapshot | None
    ) -> _Outcome:
        """Whatever went wrong, learn the task's real state before saying anything."""
        log.warning("task %s round %d: %s failed: %s", task_id, round_, claim.operate, error)
        try:
            progress = await self._ivh.get_progress(task_id)
        except IvhError as reread:
            log.warning("task %s: cannot re-read progress: %s", task_id, reread)
            if error.outcome_unknown:
                # Keep the claim: the publisher settles the round when progress shows it.
                return _Outcome(
                    "Tencent did not answer in time and its progress cannot be read now;"
                    " this message will show the outcome as soon as Tencent does.",
                    keep_claim=True,
                )
            progress = None
        now = snapshot_of(progress, seen) if progress is not None else None
        # Still waiting in this round: not moved on, and not already waiting in the next one.
        still_waiting = now is None or (now.waiting and now.round <= round_)
        if not still_waiting and error.outcome_unknown:
            # Our call reached Tencent after all: the round moved on because of it.
            await self.record(task_id, round_, claim, error.request_id)
            return _Outcome()
        if not still_waiting:
            return _Outcome("This round was already decided outside Slack.", in_thread=False)
        action = "approval" if claim.operate == "AGREE" else "rejection"
        return _Outcome(
            messages.error_text(claim.user, action, error.code, error.message, error.request_id)
        )


def decision_from(claim: Claim, round_: int, request_id: str = "") -> Decision:
    return Decision(
        round=round_,
        operate="AGREE" if claim.operate == "AGREE" else "REJECT",
        user=claim.user,
        at=time.time(),
        reason=claim.reason,
        request_id=request_id,
        approvers=claim.approvers,
        category=claim.category,
    )


@dataclass(frozen=True)
class _Outcome:
    """What to tell the decider after a call, and whether the claim must outlive it."""

    text: str = ""
    in_thread: bool = True
    keep_claim: bool = False
