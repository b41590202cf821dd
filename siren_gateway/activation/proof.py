"""What proves a siren sounded: the command each siren gets (with the sequence it must report
back) and the verdicts drawn from its own reports. Pure functions of the evidence, so they are
tested apart from any link.

Sounded needs `state == sounding`, the controller's last command sequence equal to ours and
the sounding current above the profile's threshold (or the device's own "sounding" ack, or
idle + "completed" with our sequence); failed is a refusal, a failing fault while sounding,
sounding with no current after the first on-step, or the controller's own "failed".
"""

from __future__ import annotations

from datetime import UTC, datetime

from siren_gateway.activation.model import Activation, SirenResult, Status, sequence_of
from siren_gateway.model import SEQUENCE_POINT, Command, CommandKind, Sample, new_command_id


def clock_skew(sample: Sample | None) -> float | None:
    if sample is None or sample.device_time is None:
        return None
    return sample.device_time.timestamp() - sample.received_at.timestamp()


def command_for(activation: Activation, result: SirenResult, sample: Sample | None,
                clock_tolerance_s: float) -> Command:
    """The command that carries out `activation` on one siren, and how it starts: on the
    siren's own clock when that clock can be trusted, else at once (the gateway sleeps to the
    start)."""
    sequence = sequence_of(activation.id)
    skew = clock_skew(sample)
    result.clock_skew_s = round(skew, 3) if skew is not None else None
    command_id = result.command_id or new_command_id()
    result.command_id = command_id
    if activation.action == "silent_test":
        result.started_by_gateway = True
        return Command(CommandKind.SILENT_TEST, sequence=sequence, command_id=command_id)
    if skew is None or abs(skew) > clock_tolerance_s:
        # The siren's clock cannot be trusted to start it: start it ourselves, on time.
        result.started_by_gateway = True
        return Command(CommandKind.SOUND, signal=activation.signal, sequence=sequence,
                       command_id=command_id)
    result.started_by_gateway = False
    return Command(CommandKind.SOUND, signal=activation.signal, sequence=sequence,
                   start_at=datetime.fromtimestamp(activation.start_at, UTC),
                   command_id=command_id)


def judge_sample(activation: Activation, sample: Sample, sequence: int,
                 threshold: float | None, first_on_s: float, failing: set[str], now: float
                 ) -> tuple[Status, str] | None:
    """What a status report proves about this activation on this siren: a verdict, or None
    while it proves nothing yet. Only the siren's own evidence counts: our sequence, its state,
    its sounding current, its own result."""
    values = sample.values
    seen_sequence = values.get(SEQUENCE_POINT)
    if seen_sequence is not None and seen_sequence != sequence:
        return None  # the controller has not (yet) taken our command
    state = values.get("state")
    result = values.get("last_activation_result")
    faults = sample.faults & failing
    if activation.action == "silent_test":
        if state == "silent_test" or seen_sequence is None:
            return None
        if faults:
            return Status.FAILED, f"silent test found {', '.join(sorted(faults))}"
        if result == "completed":
            return Status.PASSED, "controller reports the audio chain checked out"
        if result == "failed":
            return Status.FAILED, "controller reports the silent test failed"
        return None
    if state in ("sounding", "start_pending") and faults:
        return Status.FAILED, f"{', '.join(sorted(faults))} reported during sounding"
    if state == "sounding":
        current = values.get("sounding_current")
        if threshold is None:
            return Status.SOUNDED, "controller reports sounding (no current sensing)"
        if isinstance(current, int | float) and current >= threshold:
            return Status.SOUNDED, f"sounding with {current} A"
        # Judged at the time the report was taken, not at the time it is read: a report from
        # the first second of the signal (the current still rising), read late after a stall in
        # the reports (a cluster's mirrored statuses, a slow broker), proves nothing about the
        # current; a later report decides, or the confirmation window ends without proof.
        taken = min(now, sample.received_at.timestamp())
        if taken > activation.start_at + first_on_s + 1.0:
            return Status.FAILED, "controller reports sounding but no sounding current"
        return None
    if seen_sequence is None:
        # Without the sequence an idle report may be about an earlier activation: only
        # sounding seen with our own eyes proves this one.
        return None
    if state == "idle" and result == "failed":
        return Status.FAILED, "controller reports the activation failed"
    if state == "idle" and result == "completed" and now > activation.start_at:
        return Status.SOUNDED, "controller reports the signal completed"
    return None


def judge_progress(activation: Activation, progress: str, faults: set[str]
                   ) -> tuple[Status, str] | None:
    """An MQTT device's own progress acknowledgement for this command."""
    if activation.action == "sound" and progress == "sounding":
        if faults:
            return Status.FAILED, f"{', '.join(sorted(faults))} reported during sounding"
        return Status.SOUNDED, "controller acknowledged sounding"
    if progress == "failed":
        return Status.FAILED, "controller reports the activation failed"
    return None
