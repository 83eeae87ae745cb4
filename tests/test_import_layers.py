"""The package's imports run one way: from the entry points down to the clip layout, no cycles.

Every module under avdit/ is parsed (not imported) and each `import avdit...` or `from avdit...
import ...` is collected, function-level lazy imports included: a lazy import is still a
dependency, it only moves the failure from import time to call time. A module may import its own
floor or a lower one; peers on one floor may import each other, but never in a cycle. The floors,
bottom first, are the table below; a new module needs a row before this test passes.
"""
import ast
import fnmatch
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "avdit"

# (floor, module patterns), bottom first. A pattern names a module or a package (and everything
# in it); `*` matches as in fnmatch.
FLOORS = (
    ("clip layout", ("avdit.layout", "avdit.tasks", "avdit.errors")),
    ("infrastructure", ("avdit.workdir", "avdit.sharding", "avdit.checkpointing",
                        "avdit.hardware", "avdit.media")),
    ("data", ("avdit.data",)),
    ("models", ("avdit.models",)),
    ("diffusion", ("avdit.diffusion",)),
    ("training", ("avdit.training",)),
    ("sampling", ("avdit.sampling",)),
    ("evaluation", ("avdit.evaluation",)),
    ("workflows", ("avdit.workflows",)),
    ("entry points", ("avdit.main", "avdit.tools")),
)


def module_files() -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every module of the package but its empty root."""
  modules = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    if len(parts) > 1:
      modules[".".join(parts)] = path
  return modules


def imports_of(name: str, path: pathlib.Path, modules) -> set[str]:
  """The avdit modules module `name` imports anywhere in it; `from avdit.x import y` is
  avdit.x.y when that is a module, else avdit.x (relative imports resolved alike)."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.split(".")[0] == "avdit")
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parent + ([base] if base else []))
      if base.split(".")[0] != "avdit":
        continue
      for alias in node.names:
        child = f"{base}.{alias.name}"
        found.add(child if child in modules else base)
  return found


def floor_of(module: str) -> int:
  for index, (_, patterns) in enumerate(FLOORS):
    for pattern in patterns:
      if module == pattern or module.startswith(pattern + ".") or fnmatch.fnmatch(module, pattern):
        return index
  raise AssertionError(f"{module} has no floor: add it to FLOORS in {__file__}")


def import_graph() -> dict[str, set[str]]:
  modules = module_files()
  return {name: imports_of(name, path, modules) - {name} for name, path in modules.items()}


def test_every_import_names_a_module():
  modules = module_files()
  missing = sorted(f"{importer} -> {target}" for importer, targets in import_graph().items()
                   for target in targets if target not in modules)
  assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
  """'importer (floor) -> imported (floor)' for every import of `graph` that goes up a floor."""
  upward = []
  for importer, targets in sorted(graph.items()):
    for target in sorted(targets):
      low, high = floor_of(importer), floor_of(target)
      if high > low:
        upward.append(f"{importer} ({FLOORS[low][0]}) -> {target} ({FLOORS[high][0]})")
  return upward


def test_imports_go_down_or_across_floors():
  upward = upward_imports(import_graph())
  assert not upward, "imports reaching up a floor:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as [a, b, ..., a], or None; depth-first with the path on a stack."""
  done, on_path, path = set(), set(), []

  def visit(node):
    path.append(node)
    on_path.add(node)
    for nxt in sorted(graph.get(node, ())):
      if nxt in on_path:
        return path[path.index(nxt):] + [nxt]
      if nxt not in done:
        cycle = visit(nxt)
        if cycle:
          return cycle
    on_path.discard(path.pop())
    done.add(node)
    return None

  for start in sorted(graph):
    if start not in done:
      cycle = visit(start)
      if cycle:
        return cycle
  return None


def test_no_import_cycles():
  cycle = find_cycle(import_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_name_what_breaks_the_order():
  """Two imports this package once had: diffusion reaching up into sampling, and a pair of data
  modules importing each other."""
  graph = {"avdit.diffusion.cdcd": {"avdit.sampling.tasks", "avdit.layout"},
           "avdit.main": {"avdit.workflows.end_to_end"}}
  assert upward_imports(graph) == [
      "avdit.diffusion.cdcd (diffusion) -> avdit.sampling.tasks (sampling)"]
  pair = {"avdit.data.av_folder": {"avdit.data.prepare"},
          "avdit.data.prepare": {"avdit.data.av_folder"}}
  assert find_cycle(pair) == ["avdit.data.av_folder", "avdit.data.prepare", "avdit.data.av_folder"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
