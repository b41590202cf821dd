"""Maintenance alerts: rules evaluated on bus events, one alert per condition and siren.

Lifecycle: a condition must hold for its rule's `for_s` before the alert is raised (once); it
stays active (or acknowledged, by an operator with a comment) until the condition has been gone
for `clear_after_s`, then it is cleared. Thresholds clear only past their hysteresis bound. A
condition that comes back before the alert cleared does not raise a new one: flapping makes no
storm. Inhibited sirens raise nothing. Alerts are persisted and reloaded as they were, so a
restart never raises them again as new.

One module, past 400 lines, because every rule reads and writes the same trackers (one per
condition and siren) under the same lifecycle; the alert type is in model.py, the rows in
store/alerts.py, the notifiers apart.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from siren_gateway.alerts.model import Alert
from siren_gateway.config.alerts import AlertsConfig, ThresholdRule
from siren_gateway.config.common import SEVERITY_RANK
from siren_gateway.errors import Conflict, NotFound
from siren_gateway.live.bus import (
    AlertChanged,
    Bus,
    CoverageChanged,
    Event,
    InspectionOverdue,
    SampleReceived,
    ScheduleEvent,
    SecurityEvent,
    SirenResultFinal,
    SpoolOverflow,
    Subscription,
)
from siren_gateway.live.fleet import Fleet, SirenState
from siren_gateway.model import NUMBER_TYPES, Sample
from siren_gateway.runtime.clock import Clock, iso_utc
from siren_gateway.runtime.tasks import cancel_and_wait
from siren_gateway.security.audit import AuditLog
from siren_gateway.security.auth import Principal
from siren_gateway.store.base import Store
from siren_gateway.store.errors import StorageError

log = logging.getLogger(__name__)

SPOOL_QUIET_S = 600.0  # a spool overflow alert clears after this long without another
ATTACK_QUIET_S = 900.0  # a login_attack alert clears after this long without a failure
# Samples are evaluated in batches at most this often: each wake-up of an idle gateway costs
# more than the rules (bench/poll_throughput.py), and alerts need no sub-second latency.
BATCH_PAUSE_S = 0.25


@dataclass(slots=True)
class _Tracker:
    true_since: float | None = None
    false_since: float | None = None
    alert: Alert | None = None


_NO_OVERRIDE: tuple[bool, str | None] = (True, None)
# Cleared alerts held in memory for the dashboard's recent list (active ones are all held).
KEEP_CLEARED = 500


class AlertEngine:
    def __init__(self, config: AlertsConfig, coverage_severity: str, fleet: Fleet, bus: Bus,
                 store: Store, audit: AuditLog, clock: Clock | None = None,
                 listen_from_start: bool = True) -> None:
        self.clock = clock or fleet.clock
        self.coverage_severity = coverage_severity  # the coverage section says how bad
        self.fleet = fleet
        self.bus = bus
        self.health = store.health  # whether storage takes writes now
        self.store = store.alerts
        self.audit = audit
        self.config = config
        self.alerts: dict[int, Alert] = {}
        self._trackers: dict[tuple[str, str | None], _Tracker] = {}
        self._next_id = 1
        # One gateway listens from its construction, so nothing its parts publish while they
        # start is missed; a cluster node's engine only on the leader, once it takes over
        # (a follower's queue would fill with events nobody reads).
        self._subscription: Subscription | None = (self._subscribe() if listen_from_start
                                                   else None)
        self._attacks: dict[str, float] = {}  # login_attack subject -> last seen
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._started_at = self.clock.now()
        self._started_mono = self.clock.monotonic()
        self._last_overflow = 0.0
        self._dirty: set[int] = set()
        self._fault_rules = frozenset(self.config.faults)
        self._fault_trackers: dict[str, set[str]] = {}  # siren -> fault rules being tracked
        self._disarmed: set[str] = set()  # sirens with a "disarmed" tracker
        self._overridden = frozenset(o.rule for o in self.config.overrides)
        # Each siren's threshold rules; sirens without overrides share one tuple.
        self._siren_thresholds: dict[str, tuple[tuple[str, ThresholdRule], ...]] = {}
        self._rule_sets: dict[tuple[tuple[str, int], ...],
                              tuple[tuple[str, ThresholdRule], ...]] = {}
        self._resolved_flags: dict[tuple[str, str], tuple[bool, str | None]] = {}
        self.evaluations = 0

    # -- lifecycle -------------------------------------------------------------------------

    def _subscribe(self) -> Subscription:
        return self.bus.subscribe(
            "alerts", maxsize=100_000,
            kinds=(SampleReceived, SpoolOverflow, SirenResultFinal, ScheduleEvent,
                   SecurityEvent, CoverageChanged, InspectionOverdue))

    async def start(self) -> None:
        if self._subscription is None:
            self._subscription = self._subscribe()
        reloaded, top = await self.store.not_cleared()
        self._next_id = top + 1
        for alert in reloaded:
            self.alerts[alert.id] = alert
            # Reloaded as raised: a condition that still holds keeps this alert, never a new one.
            key = alert.siren_id if alert.siren_id is not None else alert.subject
            self._trackers[(alert.rule, key)] = _Tracker(
                true_since=alert.raised_at, alert=alert)
            if alert.rule in self._fault_rules and alert.siren_id is not None:
                self._fault_trackers.setdefault(alert.siren_id, set()).add(alert.rule)
            if alert.rule == "disarmed" and alert.siren_id is not None:
                self._disarmed.add(alert.siren_id)
        self._started_at = self.clock.now()
        self._started_mono = self.clock.monotonic()
        self._running = True
        self._tasks = [asyncio.create_task(self._consume(), name="alert rules"),
                       asyncio.create_task(self._tick(), name="alert clock")]

    async def stop(self) -> None:
        self._running = False
        await cancel_and_wait(self._tasks)
        await self._flush()
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None

    # -- rules -----------------------------------------------------------------------------

    def _rule_for(self, name: str, rule: ThresholdRule, siren_id: str, zones: list[str]
                  ) -> ThresholdRule | None:
        """The rule with this siren's zone and siren overrides applied (the per-sample path
        keeps the result in its per-siren rule list, so this runs once per siren)."""
        if name not in self._overridden:
            return rule if rule.enabled else None
        return self._resolve_threshold(name, rule, siren_id, zones)

    def _resolve_threshold(self, name: str, rule: ThresholdRule, siren_id: str,
                           zones: list[str]) -> ThresholdRule | None:
        chosen = [o for o in self.config.overrides if o.rule == name and o.zone in zones]
        chosen += [o for o in self.config.overrides if o.rule == name and o.siren == siren_id]
        if not chosen:  # the usual case: the one shared rule (a copy per siren cost ~2 KB)
            return rule if rule.enabled else None
        merged = rule.model_dump()
        for override in chosen:  # zone overrides first, then the siren's own
            merged |= override.model_dump(exclude_none=True, exclude={"rule", "siren", "zone"})
        if not merged["enabled"]:
            return None
        return ThresholdRule(**merged)

    def _enabled(self, name: str, siren_id: str, zones: list[str]) -> tuple[bool, str | None]:
        """For non-threshold rules: (enabled, severity override). Rules that no override names
        (the usual case) answer at once; others are resolved once per siren."""
        if name not in self._overridden:
            return _NO_OVERRIDE
        key = (name, siren_id)
        found = self._resolved_flags.get(key)
        if found is None:
            found = self._resolved_flags[key] = self._resolve_flag(name, siren_id, zones)
        return found

    def _resolve_flag(self, name: str, siren_id: str, zones: list[str]
                      ) -> tuple[bool, str | None]:
        enabled, severity = True, None
        for override in [o for o in self.config.overrides if o.rule == name and o.zone in zones] + [
                o for o in self.config.overrides if o.rule == name and o.siren == siren_id]:
            enabled = override.enabled if override.enabled is not None else enabled
            severity = override.severity or severity
        return enabled, severity

    def _siren_zones(self, siren_id: str) -> list[str] | None:
        """The siren's zones (its configuration's list: read, never changed), or None when it
        must raise nothing (unknown or inhibited)."""
        state = self.fleet.states.get(siren_id)
        if state is None or state.config.inhibited:
            return None
        return state.config.zones

    def _evaluate_sample(self, sample: Sample, now: float) -> None:
        zones = self._siren_zones(sample.siren_id)
        if zones is None:
            return
        siren_id = sample.siren_id
        rules = self._siren_thresholds.get(siren_id)
        if rules is None:  # resolved once per siren: this runs for every sample
            own = tuple((name, rule) for name, base in self.config.thresholds.items()
                        if (rule := self._rule_for(name, base, siren_id, zones)) is not None)
            rules = self._rule_sets.setdefault(tuple((n, id(r)) for n, r in own), own)
            self._siren_thresholds[siren_id] = rules
        values = sample.values
        for name, rule in rules:
            value = values.get(rule.point)
            if not isinstance(value, NUMBER_TYPES) or value.__class__ is bool:
                continue
            tracker = self._trackers.get((name, siren_id))
            raised = tracker is not None and tracker.alert is not None
            if rule.below is not None:
                condition = value < (rule.clear_at if raised else rule.below)
            else:
                condition = value > (rule.clear_at if raised else rule.above or 0.0)
            if not condition and tracker is None:
                continue  # the common case, on every sample: nothing to do
            # (the message is only needed when raising: not formatted per sample)
            text = "" if not condition else (
                f"{rule.point} {value} below {rule.below}" if rule.below is not None
                else f"{rule.point} {value} above {rule.above}")
            self._observe(name, siren_id, zones, condition, now, rule.severity, text, rule.for_s)
        # Only faults reported now, and this siren's open fault trackers, need a look: on a
        # healthy fleet that is nothing, and this runs for every poll.
        watched = self._fault_trackers.get(siren_id)
        if sample.faults or watched:
            present = sample.faults & self._fault_rules
            for fault in present | watched if watched else present:
                enabled, override = self._enabled(fault, siren_id, zones)
                if enabled:
                    self._observe(fault, siren_id, zones, fault in present, now,
                                  override or self.config.faults[fault],
                                  f"controller reports {fault}")
        # Disarmed (maintenance) is a state, not a fault: raised so that it shows, and so
        # that the time a siren could not sound is on record (availability counts it).
        disarmed = values.get("armed") is False
        if disarmed or siren_id in self._disarmed:
            self._observe_disarmed(siren_id, zones, disarmed, now)
        if sample.device_time is not None:
            skew = (sample.device_time - sample.received_at).total_seconds()
            skewed = abs(skew) > self.config.clock_skew_s
            if skewed or ("clock_skew", siren_id) in self._trackers:  # (seldom: looked up then)
                enabled, override = self._enabled("clock_skew", siren_id, zones)
                if enabled:
                    self._observe("clock_skew", siren_id, zones, skewed,
                                  now, override or self.config.clock_skew_severity,
                                  f"controller clock {skew:+.0f} s from the gateway's"
                                  if skewed else "")

    def _observe_disarmed(self, siren_id: str, zones: list[str], disarmed: bool,
                          now: float) -> None:
        enabled, override = self._enabled("disarmed", siren_id, zones)
        if not enabled:
            return
        self._observe("disarmed", siren_id, zones, disarmed, now,
                      override or self.config.disarmed_severity,
                      "disarmed for maintenance: it cannot sound until armed again")
        if ("disarmed", siren_id) in self._trackers:
            self._disarmed.add(siren_id)
        else:
            self._disarmed.discard(siren_id)

    def _evaluate_offline(self, now: float) -> None:
        """Runs over the whole fleet once a second: an answering siren costs one float
        comparison (monotonic clock, no datetimes, no key built)."""
        mono = self.clock.monotonic()
        limit = self.config.offline_after_s
        cutoff = mono - limit
        started = self._started_mono
        states = self.fleet.states
        for state in states.values():
            if (state.last_seen_mono or started) >= cutoff:
                continue
            self._check_offline(state.config.id, state, mono - (state.last_seen_mono or started),
                                limit, now)
        # Sirens with an offline alert that answer again: cleared here.
        for siren_id in [key[1] for key in self._trackers if key[0] == "offline"]:
            back = states.get(siren_id) if siren_id is not None else None
            if back is not None and (back.last_seen_mono or started) >= cutoff:
                self._check_offline(back.config.id, back, mono - (back.last_seen_mono or started),
                                    limit, now)

    def _check_offline(self, siren_id: str, state: SirenState, silent: float, limit: float,
                       now: float) -> None:
        zones = self._siren_zones(siren_id)
        if zones is None:
            return
        enabled, override = self._enabled("offline", siren_id, zones)
        if not enabled:
            return
        condition = silent > limit
        if not condition:
            message = ""
        elif state.last_seen is None:
            message = f"never answered since the gateway started {silent:.0f} s ago"
        else:
            message = (f"no answer for {silent:.0f} s; last answered at "
                       f"{state.last_seen.isoformat(timespec='seconds')}"
                       + (f" ({state.last_error})" if state.last_error else ""))
        self._observe("offline", siren_id, zones, condition, now,
                      override or self.config.offline_severity, message)

    def _evaluate_result(self, event: SirenResultFinal, now: float) -> None:
        zones = self._siren_zones(event.siren_id)
        # Every class counts: the yearly 9·18 sounding is an exercise, and a siren silent in
        # it needs the same repair as one silent in a test.
        if zones is None or event.klass not in ("test", "exercise", "emergency"):
            return
        enabled, override = self._enabled("activation_failed", event.siren_id, zones)
        if not enabled:
            return
        if event.status in ("failed", "no_feedback"):
            text = (f"{event.klass} activation {event.activation_id}: {event.status} "
                    f"({event.reason})")
            self._observe("activation_failed", event.siren_id, zones, True, now,
                          override or self.config.activation_failure_severity, text, clear_now=True)
        elif event.status in ("sounded", "passed"):
            # proof that the siren works again ends an earlier failure alert
            self._observe("activation_failed", event.siren_id, zones, False, now, "info", "",
                          clear_now=True)

    # -- the state machine ------------------------------------------------------------------

    def _observe(self, rule: str, siren_id: str | None, zones: list[str], condition: bool,
                 now: float, severity: str, message: str, for_s: float = 0.0,
                 clear_now: bool = False, subject: str | None = None) -> None:
        """`subject` tells apart alerts of one rule that concern no siren (one per plan)."""
        self.evaluations += 1
        key = (rule, siren_id if siren_id is not None else subject)
        tracker = self._trackers.get(key)
        if tracker is None:
            if not condition:
                return
            tracker = self._trackers[key] = _Tracker()
            if rule in self._fault_rules and siren_id is not None:
                self._fault_trackers.setdefault(siren_id, set()).add(rule)
        if condition:
            tracker.false_since = None
            tracker.true_since = tracker.true_since or now
            if tracker.alert is None and now - tracker.true_since >= for_s:
                self._raise(tracker, rule, siren_id, zones, severity, message, now, subject)
            return
        tracker.true_since = None
        if tracker.alert is None:
            self._forget(key)
            return
        tracker.false_since = tracker.false_since or now
        if clear_now or now - tracker.false_since >= self.config.clear_after_s:
            self._clear(tracker.alert, now)
            self._forget(key)

    def _forget(self, key: tuple[str, str | None]) -> None:
        del self._trackers[key]
        rule, siren_id = key
        if siren_id is not None and rule in self._fault_rules:
            watched = self._fault_trackers.get(siren_id)
            if watched is not None:
                watched.discard(rule)

    def _raise(self, tracker: _Tracker, rule: str, siren_id: str | None, zones: list[str],
               severity: str, message: str, now: float, subject: str | None = None) -> None:
        alert = Alert(self._next_id, rule, siren_id, list(zones), severity, message, raised_at=now,
                      history=[{"event": "raised", "at": iso_utc(now), "message": message}],
                      subject=subject)
        self._next_id += 1
        tracker.alert = alert
        self.alerts[alert.id] = alert
        self._changed(alert, "raised")
        log.warning("alert %d raised: %s %s: %s", alert.id, rule, siren_id or "", message)

    def _clear(self, alert: Alert, now: float) -> None:
        alert.state, alert.cleared_at = "cleared", now
        alert.history.append({"event": "cleared", "at": iso_utc(now)})
        self._changed(alert, "cleared")

    def _changed(self, alert: Alert, change: str) -> None:
        self._dirty.add(alert.id)
        self.bus.publish(AlertChanged(change, alert.public()))

    async def acknowledge(self, who: Principal, alert_id: int, comment: str) -> Alert:
        alert = self.alerts.get(alert_id)
        if alert is None:
            await self.audit.record(who, "alert.ack", "refused: not found",
                                    target=f"alert {alert_id}")
            raise NotFound(f"no alert {alert_id}")
        if alert.state != "active":
            await self.audit.record(who, "alert.ack", f"refused: {alert.state}",
                                    target=f"alert {alert_id}", comment=comment)
            raise Conflict(f"alert {alert_id} is already {alert.state}")
        now = self.clock.now()
        alert.state, alert.acknowledged_at = "acknowledged", now
        alert.acknowledged_by, alert.comment = who.username, comment
        alert.history.append({"event": "acknowledged", "at": iso_utc(now), "by": who.username,
                              "comment": comment})
        self._changed(alert, "acknowledged")
        await self._flush()
        await self.audit.record(who, "alert.ack", "ok", target=f"alert {alert_id}",
                                comment=comment, rule=alert.rule, siren=alert.siren_id)
        return alert

    # -- loops -----------------------------------------------------------------------------

    async def _consume(self) -> None:
        """Evaluate events in batches: waking once per sample (hundreds a second on a large
        fleet) cost more than the rules themselves; the pause costs at most its length in latency."""
        subscription = self._subscription
        assert subscription is not None  # (made at start at the latest)
        queue = subscription.queue
        while self._running:
            events = [await subscription.get()]
            while not queue.empty():
                events.append(queue.get_nowait())
            now = self.clock.now()
            for event in events:
                try:
                    self._evaluate(event, now)
                except Exception:  # one bad rule must not stop the others
                    log.exception("alert evaluation failed for %r", event)
            await asyncio.sleep(BATCH_PAUSE_S)

    def _evaluate(self, event: Event, now: float) -> None:
        if isinstance(event, SampleReceived):
            self._evaluate_sample(event.sample, now)
        elif isinstance(event, SirenResultFinal):
            self._evaluate_result(event, now)
        elif isinstance(event, ScheduleEvent):
            # A missed scheduled test stays raised until the plan next runs to its end.
            subject = f"schedule:{event.plan_id}"
            if event.kind == "missed":
                local = event.scheduled_at.isoformat()
                self._observe("scheduled_test_missed", None, list(event.zones), True, now,
                              self.config.missed_test_severity,
                              f"{event.plan_name} ({local}) did not sound: {event.message}",
                              subject=subject)
            elif event.kind == "done":
                self._observe("scheduled_test_missed", None, list(event.zones), False, now,
                              "info", "", clear_now=True, subject=subject)
        elif isinstance(event, InspectionOverdue):
            state = self.fleet.states.get(event.siren_id)
            self._observe("inspection_overdue", event.siren_id,
                          list(state.config.zones) if state else [], event.overdue, now,
                          event.severity, f"{event.plan_name}: inspection of {event.siren_id} "
                          f"was due {event.due_at.isoformat()} and is not done",
                          clear_now=not event.overdue)
        elif isinstance(event, CoverageChanged):
            repair = (f"; repairing {', '.join(event.repair)} restores it" if event.repair
                      else "; no repair of a siren alone restores it")
            self._observe("coverage_low", None, [event.zone_id], event.below, now,
                          self.coverage_severity,
                          f"{event.zone_name}: {event.share:.1%} of its area would hear the "
                          f"alarm now, under the target of {event.target:.0%}{repair}",
                          clear_now=not event.below, subject=f"coverage:{event.zone_id}")
        elif isinstance(event, SecurityEvent):
            self._attacks[event.subject] = now
            self._observe("login_attack", None, [], True, now, self.config.login_attack_severity,
                          event.message, subject=event.subject)
        elif isinstance(event, SpoolOverflow):
            self._last_overflow = now
            self._observe("telemetry_spool_overflow", None, [], True, now,
                          self.config.spool_overflow_severity,
                          f"{event.sink} sink dropped {event.dropped_total} lines")

    async def _tick(self) -> None:
        """Time-driven transitions: silence, and conditions whose duration has now passed."""
        ticks = 0
        while self._running:
            await self.clock.sleep(0.5)
            now = self.clock.now()
            try:
                ticks += 1
                if ticks % 2 == 0:  # a walk over the fleet: once a second is plenty for it
                    self._evaluate_offline(now)
                if self._last_overflow and now - self._last_overflow > SPOOL_QUIET_S:
                    self._observe("telemetry_spool_overflow", None, [], False, now, "info", "")
                for subject, seen in list(self._attacks.items()):
                    if now - seen > ATTACK_QUIET_S:  # no more failures for a while: over
                        del self._attacks[subject]
                        self._observe("login_attack", None, [], False, now, "info", "",
                                      clear_now=True, subject=subject)
                health = self.health
                self._observe("storage_failing", None, [], health.failing, now,
                              self.config.storage_failure_severity,
                              f"the state database cannot be written ({health.last_error}); "
                              "alarms still go out, their records are held in memory"
                              if health.failing else "", clear_now=not health.failing)
                for (rule, siren_id), tracker in list(self._trackers.items()):
                    if rule in ("offline", "activation_failed", "telemetry_spool_overflow",
                                "scheduled_test_missed", "storage_failing", "login_attack",
                                "coverage_low"):
                        continue
                    if tracker.alert is None and tracker.true_since is not None:
                        self._recheck_duration(rule, siren_id, tracker, now)
                    elif tracker.alert is not None and tracker.false_since is not None and (
                            now - tracker.false_since >= self.config.clear_after_s):
                        self._clear(tracker.alert, now)
                        self._forget((rule, siren_id))
                        if rule == "disarmed" and siren_id is not None:
                            self._disarmed.discard(siren_id)
                await self._flush()
            except Exception:
                log.exception("alert clock failed")

    def _recheck_duration(self, rule: str, siren_id: str | None, tracker: _Tracker,
                          now: float) -> None:
        """A condition still holding (no newer sample said otherwise) may now be due."""
        if siren_id is None or tracker.true_since is None:
            return
        zones = self._siren_zones(siren_id) or []
        base = self.config.thresholds.get(rule)
        threshold = self._rule_for(rule, base, siren_id, zones) if base else None
        for_s = threshold.for_s if threshold else 0.0
        if now - tracker.true_since >= for_s:
            state = self.fleet.states.get(siren_id)
            if state is not None and state.sample is not None:
                self._evaluate_sample(state.sample, now)

    async def _flush(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        try:
            await self.store.write([self.alerts[alert_id] for alert_id in dirty])
        except StorageError as exc:
            self.health.failed(exc)  # kept in memory and written when storage returns
            self._dirty |= dirty
        else:
            self.health.succeeded()
            self._prune()

    def _prune(self) -> None:
        """Forget the oldest cleared alerts beyond KEEP_CLEARED: they are on disk, and a
        gateway running for months must not hold every alert it ever raised."""
        cleared = [a for a in self.alerts.values()
                   if a.state == "cleared" and a.id not in self._dirty]
        if len(cleared) <= KEEP_CLEARED:
            return
        cleared.sort(key=lambda a: a.cleared_at or 0.0)
        for alert in cleared[:len(cleared) - KEEP_CLEARED]:
            del self.alerts[alert.id]

    # -- queries ---------------------------------------------------------------------------

    def get(self, alert_id: int) -> Alert | None:
        """An alert held in memory (every uncleared one, and the recent cleared ones)."""
        return self.alerts.get(alert_id)

    def query(self, state: str | None = None, severity: str | None = None,
              siren: str | None = None, zone: str | None = None) -> list[dict[str, Any]]:
        """Active first, then acknowledged, then cleared; newest first within each."""
        order = {"active": 0, "acknowledged": 1, "cleared": 2}
        chosen = [a for a in self.alerts.values()
                  if (state is None or a.state == state)
                  and (severity is None or SEVERITY_RANK[a.severity] >= SEVERITY_RANK[severity])
                  and (siren is None or a.siren_id == siren)
                  and (zone is None or zone in a.zones)]
        chosen.sort(key=lambda a: (order[a.state], -SEVERITY_RANK[a.severity], -a.raised_at))
        return [a.public() for a in chosen]
