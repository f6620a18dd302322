"""What a run tells a person: console progress, metrics.jsonl and TensorBoard events."""
import json
import os
import time

from tensorboardX import SummaryWriter  # writes event files without TensorFlow.


def _format_eta(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class RunLog:
    """Appends metric records to `metrics.jsonl` and TensorBoard; prints epoch summaries."""

    def __init__(self, workdir, last_epoch):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._drop_after(last_epoch)
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self.start = time.time()

    def _drop_after(self, last_epoch):
        """Forget records of epochs a killed run did not finish (they will be redone)."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        keep = [r for r in records if r.get("epoch", 0) <= last_epoch]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)

    def write(self, kind, step, epoch, metrics):
        record = {"kind": kind, "step": int(step), "epoch": int(epoch)}
        record.update({k: float(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in metrics.items():
            self.tb.add_scalar(f"{kind}/{k}", float(v), int(step))

    def epoch_line(self, epoch, num_epochs, train, val_top1, test_top1, steps_per_s,
                   seconds_per_epoch, is_best):
        eta = _format_eta((num_epochs - epoch) * seconds_per_epoch)
        test = f"{test_top1:5.1f}{'*' if is_best else ' '}" if test_top1 is not None else "  -   "
        extras = "".join(f"  {k} {v:.3g}" for k, v in train.items()
                         if k not in ("loss", "accuracy", "lr"))
        print(f"epoch {epoch:3d}/{num_epochs}  loss {train['loss']:.4f}  "
              f"train {train['accuracy']:5.1f}  val {val_top1:5.1f}  test {test}  "
              f"lr {train['lr']:.2g}  {steps_per_s:.2f} steps/s  eta {eta}{extras}", flush=True)

    def close(self):
        self.tb.close()
