"""What a run tells a person: console progress, metrics.jsonl and TensorBoard events.

Used by the classifier's loop (records placed by epoch) and the generator trainer's (by kimg).
"""
import json
import os
import sys

from tensorboardX import SummaryWriter  # writes event files without TensorFlow.

from mgr_jax import files
from mgr_jax.errors import UserError


def format_eta(seconds):
    """h:mm:ss of a non-negative duration."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def read_records(path):
    """(records, torn) of a metrics.jsonl file.

    A last line that is not complete JSON is what a run killed while appending leaves: it is
    left out and `torn` is True. Any other line that is not JSON is a UserError naming it.
    """
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    records, torn = [], False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
        except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
            if all(not rest.strip() for rest in lines[number:]):
                torn = True
                break
            raise UserError(f"{path} line {number} is not a JSON record ({e}); remove that "
                            "line (or the file, losing the metrics history) to resume") from None
        records.append(record)
    return records, torn


def _rewrite(path, records):
    """Replace the file by `records`, one JSON line each, atomically."""
    files.replace_atomically(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in records))


class RunLog:
    """Appends metric records to `metrics.jsonl` (and TensorBoard); prints epoch summaries.

    keep(record) -> bool says which records already in the file survive a resume: those of
    work that a killed run did not finish are dropped, as it will be done again.
    `enabled=False` (the non-zero processes of a multi-host run) writes and prints nothing:
    each record is written once, by process 0.
    """

    def __init__(self, workdir, keep, tensorboard=True, enabled=True):
        self.enabled, self.tb = enabled, None
        self.path = os.path.join(workdir, "metrics.jsonl")
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if os.path.exists(self.path):
            records, torn = read_records(self.path)
            if torn:
                print(f"warning: dropped the torn last line of {self.path} (a run stopped "
                      "while writing it); it is written again", file=sys.stderr, flush=True)
            _rewrite(self.path, [r for r in records if keep(r)])
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard")) if tensorboard else None

    def records(self, kind=None):
        """The records in the file (of one kind, when given); a torn last line is skipped."""
        if not os.path.exists(self.path):
            return []
        records, _ = read_records(self.path)
        return [r for r in records if kind is None or r["kind"] == kind]

    def write(self, kind, step, metrics, **position):
        """One record: {"kind", "step", **position (epoch= or kimg=), **metrics}."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": int(step), **position}
        record.update({k: float(v) for k, v in metrics.items()})
        # O_NOFOLLOW: never append through a link (a dangling one would create a file
        # outside the workdir)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{kind}/{k}", float(v), int(step))

    def epoch_line(self, epoch, num_epochs, train, val_top1, test_top1, steps_per_s,
                   seconds_per_epoch, is_best):
        if not self.enabled:
            return
        eta = format_eta((num_epochs - epoch) * seconds_per_epoch)
        test = f"{test_top1:5.1f}{'*' if is_best else ' '}" if test_top1 is not None else "  -   "
        extras = "".join(f"  {k} {v:.3g}" for k, v in train.items()
                         if k not in ("loss", "accuracy", "lr"))
        print(f"epoch {epoch:3d}/{num_epochs}  loss {train['loss']:.4f}  "
              f"train {train['accuracy']:5.1f}  val {val_top1:5.1f}  test {test}  "
              f"lr {train['lr']:.2g}  {steps_per_s:.2f} steps/s  eta {eta}{extras}", flush=True)

    def close(self):
        if self.tb is not None:
            self.tb.close()
