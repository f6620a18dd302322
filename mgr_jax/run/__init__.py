"""The run wing: a config in, the library's calls out (`build`), and what a run needs around
them: the config's checks, the training loop, checkpoints, the work directory, logs, results,
several hosts. The library (`mgr_jax` outside this folder) never imports it."""
