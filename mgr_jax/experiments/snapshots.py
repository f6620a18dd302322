"""Per-epoch features of a run, for the figures: the run trained in pieces, snapshots between.

A run keeps only its latest and best checkpoints, so a run that needs features at given epochs
is trained in pieces (the trainer with max_epochs_this_run up to the next needed epoch) and
`Snapshots.take` stores what an epoch needs in <run>/figure_snapshots-<settings hash>/:
`features_eNNNN.npz` (real and synthetic features, Fig. 5) and `frechet.json` (Fig. 6b). A
killed command resumes there.
"""
import os

from mgr_jax.errors import TrainingDiverged
from mgr_jax.experiments import runs
from mgr_jax.files import read_json, write_json, write_npz
from mgr_jax.frechet import frechet_of_features
from mgr_jax.run import checkpoints


class Snapshots:
    """Per-epoch features of one run, stored beside it; `take` computes what an epoch needs.

    `settings`: embed_samples and fd_samples (counts), fd_space ("metric" or "self") and, for
    "metric", `metric` = (probe, state, real features) of the fixed feature classifier.
    """

    def __init__(self, job, key, *, feature_epochs=(), fd_epochs=(), settings):
        self.dir = os.path.join(job.workdir, f"figure_snapshots-{key}")
        self.feature_epochs, self.fd_epochs = set(feature_epochs), set(fd_epochs)
        self.settings = settings
        self.fd_path = os.path.join(self.dir, "frechet.json")

    @property
    def epochs(self):
        return sorted(self.feature_epochs | self.fd_epochs)

    def features_path(self, epoch):
        return os.path.join(self.dir, f"features_e{epoch:04d}.npz")

    def frechet(self):
        """{epoch: Frechet distance} of the epochs taken so far."""
        return {int(k): v for k, v in (read_json(self.fd_path) or {}).items()}

    def has(self, epoch):
        if epoch in self.feature_epochs and not os.path.exists(self.features_path(epoch)):
            return False
        return epoch not in self.fd_epochs or epoch in self.frechet()

    def take(self, epoch, state, probe):
        """Compute and store the epoch's features / Frechet distance from `state`."""
        os.makedirs(self.dir, exist_ok=True)
        s = self.settings
        if epoch in self.feature_epochs and not os.path.exists(self.features_path(epoch)):
            real, real_labels = probe.real(state, s["embed_samples"])
            arrays = {"real": real, "real_labels": real_labels}
            if probe.generator is not None:
                arrays["synthetic"] = probe.features(
                    state, probe.synthetic_images(state, s["embed_samples"]))
                arrays["synthetic_labels"] = probe.labels[:s["embed_samples"]]
            write_npz(self.features_path(epoch), **arrays)
        if epoch in self.fd_epochs and epoch not in self.frechet():
            images = probe.synthetic_images(state, s["fd_samples"])
            if s["fd_space"] == "self":
                real, _ = probe.real(state, s["fd_samples"])
                value = frechet_of_features(real, probe.features(state, images))
            else:
                metric_probe, metric_state, real = s["metric"]
                value = frechet_of_features(real, metric_probe.features(metric_state, images))
            values = self.frechet()
            values[epoch] = value
            write_json(self.fd_path, {str(k): v for k, v in sorted(values.items())})


def _latest_epoch(workdir):
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return 0
    ckpt = checkpoints.RunCheckpoints(workdir)
    try:
        return int(ckpt.latest.latest_step() or 0)
    finally:
        ckpt.close()


def _take_finished(job, snaps, probe, results, needed, log):
    """Snapshots of a finished run: only its latest and best epochs are still there."""
    num_epochs = int(job.config.num_epochs)
    for epoch in needed:
        if snaps.has(epoch):
            continue
        which = "latest" if epoch == num_epochs else (
            "best" if epoch == results.get("best_epoch") else None)
        if which is None:
            log(f"  {job.name}: finished without a snapshot of epoch {epoch} (only the "
                "latest and best epochs are kept); it is left out", flush=True)
            continue
        snaps.take(epoch, probe.restore(job.workdir, which), probe)
    return results


def train_with_snapshots(job, snaps, probe, trainer, log=print):
    """Train `job` in pieces ending at each epoch `snaps` needs, taking snapshots between.

    Returns the run's results (None if it diverged). A finished run is not retrained: its
    latest and best checkpoints give the epochs they hold; other missing epochs are reported.
    """
    results = read_json(os.path.join(job.workdir, "results.json"))
    num_epochs = int(job.config.num_epochs)
    needed = [e for e in snaps.epochs if e <= num_epochs]
    if results is not None:
        return _take_finished(job, snaps, probe, results, needed, log)
    if read_json(os.path.join(job.workdir, "diverged.json")) is not None:
        return None
    current = _latest_epoch(job.workdir)
    if current in needed and not snaps.has(current):  # killed between a piece and its snapshot
        snaps.take(current, probe.restore(job.workdir, "latest"), probe)
    lost = [e for e in needed if e < current and not snaps.has(e)]
    if lost:
        log(f"  {job.name}: already past epochs {lost} without their snapshots; they are left "
            "out", flush=True)
    while True:
        targets = [e for e in needed if e > current and not snaps.has(e)]
        stop = min(targets) if targets else num_epochs
        try:
            out = trainer(job.config, job.workdir, max_epochs_this_run=stop - current)
        except TrainingDiverged as e:
            runs.mark_diverged(job.workdir, e)
            log(f"  {job.name}: diverged at step {e.args[0]}", flush=True)
            return None
        current = stop
        if stop in needed and not snaps.has(stop):
            snaps.take(stop, probe.restore(job.workdir, "latest"), probe)
        if out is not None or current >= num_epochs:
            return out if out is not None else read_json(
                os.path.join(job.workdir, "results.json"))
