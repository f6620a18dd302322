"""The layout's rules, read from the source: imports run one way, wings keep to themselves."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("mgr_jax", "converters")


def _modules():
    """{module name: path} of the library and the converters."""
    out = {}
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    out[rel.removesuffix(".__init__")] = path
    return out


def _imports(path, modules, top_level_only):
    """Project modules imported by the file (at module level, or anywhere)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules or n.split(".")[0] == "configs")
    return found


def _graph(top_level_only):
    modules = _modules()
    # (a package importing its own submodules names itself: not an edge)
    return {m: _imports(p, modules, top_level_only) - {m} for m, p in modules.items()}


def test_no_import_cycle_between_files():
    graph = _graph(top_level_only=False)
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if nxt.startswith("configs"):
                continue
            assert state.get(nxt) != "open", f"import cycle: {' -> '.join(stack + [nxt])}"
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_wings_import_one_way():
    graph = _graph(top_level_only=False)
    for module, imported in graph.items():
        assert not any(i.startswith("configs") for i in imported), \
            f"{module} imports configs/ (the library builds what it needs from a config)"
        if module.startswith("converters"):
            assert not any(i.startswith("mgr_jax.generators") for i in imported), \
                f"{module} imports mgr_jax.generators (converters import mgr_jax.models)"
        if module.startswith("mgr_jax.models"):
            assert all(i.startswith("mgr_jax.models") for i in imported), \
                f"{module} imports outside mgr_jax.models: {sorted(imported)}"
        if module == "mgr_jax.data.protocol":
            assert not imported, "data/protocol.py is a leaf"
        if not module.startswith("mgr_jax.experiments"):
            assert not any(i.startswith("mgr_jax.experiments") for i in imported), \
                f"{module} imports the experiments"


def test_local_imports_do_not_hide_project_imports():
    """Function-local imports of project modules would hide the graph above."""
    anywhere, top = _graph(False), _graph(True)
    local = {m: anywhere[m] - top[m] for m in anywhere}
    hidden = {m: sorted(i) for m, i in local.items() if i}
    assert not hidden, f"function-local project imports: {hidden}"


# Modules outside mgr_jax/run/ that may import it: the commands (their names are kept where
# users know them) and the trainers built on the classifier's run.
RUN_USERS = ("mgr_jax.main", "mgr_jax.aot", "mgr_jax.train_generator", "mgr_jax.gan.train",
             "mgr_jax.gan.metrics", "mgr_jax.experiments")


def test_the_library_never_imports_the_run_wing():
    """mgr_jax/run/ turns configs into the library's calls; the library needs no config."""
    for module, imported in _graph(top_level_only=False).items():
        if module.startswith(("mgr_jax.run", "tests")) or module.startswith(RUN_USERS):
            continue
        assert not any(i == "mgr_jax.run" or i.startswith("mgr_jax.run.") for i in imported), \
            f"{module} imports the run wing: {sorted(i for i in imported if 'run' in i)}"


def test_commands_at_the_top_are_only_doors():
    """mgr_jax/main.py and aot.py hand over to mgr_jax/run/ (a few lines each)."""
    for name in ("main", "aot"):
        with open(os.path.join(ROOT, "mgr_jax", f"{name}.py")) as f:
            assert len(f.read().splitlines()) <= 10, f"mgr_jax/{name}.py grew: move code to run/"
