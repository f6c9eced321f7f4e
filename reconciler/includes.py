"""Fragments: where they may be read from, how they are found, and how they merge.

A project file may ``include`` fragments (paths relative to the including file),
which may include others. The rules, and why:

- **Where.** Files are read through one :class:`Reader` (path -> bytes). A
  fragment must resolve inside the repository root (``git rev-parse
  --show-toplevel``; outside git, the parent of the ``projects/`` folder given;
  ``--root`` overrides), outside ``projects/`` (files there are Projects), and
  through no symlink leaving the root: a shared fragment must not become a way to
  read a file the repository does not hold. A later caller can load the files of
  a git revision by writing them to a folder and passing it as the root.
- **How many.** At most 8 deep and 64 fragments per Project; a fragment reached
  twice (a diamond) is built once per Project; a cycle is an error.
- **Merge** (:func:`merge`). The including file wins over what it includes, at
  every level. Two siblings (fragments included by one file) declaring one
  settings key or one object (kind + name) is an error naming both places.
  Objects merge field by field (a field's value is replaced whole, lists
  included); ``prune`` lists are united.

Every value keeps where it was written: an :class:`Effective` document carries
``owners``, a sparse map from a path to the :class:`Layer` (one file built for
one Project) and the path there whose subtree it is, so a problem found in the
merged document is reported at the line that holds its text.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from yaml.nodes import MappingNode

from reconciler import schema
from reconciler.substitution import Rules, Variables
from reconciler.yamlread import Builder, Location, Path, Problem, nearest, read_document

SUFFIXES = (".yaml", ".yml")
MAX_DEPTH = 8
MAX_FRAGMENTS = 64


# --- reading files --------------------------------------------------------------------


class Reader:
    """The one way the loader reads files: path -> bytes, with the checks a fragment
    must pass (:meth:`refusal`) before it is read.

    ``root`` is the repository root; None finds it, on first need, from ``start`` (the
    first path given). ``projects`` are the folders that hold Projects.
    """

    def __init__(
        self, root: str | None = None, *, start: str = ".", projects: Iterable[str] = ()
    ) -> None:
        self._root = os.path.abspath(root) if root is not None else None
        self.start = start
        self._projects = list(projects)

    @property
    def root(self) -> str:
        if self._root is None:
            self._root = find_root(self.start)
        return self._root

    def read(self, path: str) -> bytes:
        with open(path, "rb") as handle:
            return handle.read()

    def refusal(self, path: str) -> str | None:
        """Why a fragment at ``path`` may not be read, or None."""
        roots = {self.root, os.path.realpath(self.root)}
        lexical, real = os.path.abspath(path), os.path.realpath(path)
        if not any(_inside(lexical, root) for root in roots):
            return f"it resolves outside the repository ({self.root}); --root chooses another"
        if not _inside(real, os.path.realpath(self.root)):
            return "a symlink leaving the repository: refused, unread"
        folders = [os.path.join(self.root, "projects"), *self._projects]
        if any(_inside(real, os.path.realpath(folder)) for folder in folders):
            return "files under projects/ are Projects, never fragments (move it, e.g. to base/)"
        return None


class RepositoryRoots:
    """The repository root of each Project file, for the paths its values give (a
    function's zip): `override` (--root), else :func:`find_root` from the file's folder,
    found once per folder. Safe to share between threads."""

    def __init__(self, override: str | None = None) -> None:
        self.override = override
        self._found: dict[str, str] = {}
        self._lock = threading.Lock()

    def of(self, file: str) -> str:
        if self.override is not None:
            return self.override
        folder = os.path.dirname(os.path.abspath(file))
        with self._lock:
            known = self._found.get(folder)
        if known is None:
            known = find_root(folder)
            with self._lock:
                self._found[folder] = known
        return known


def find_root(start: str) -> str:
    """The repository holding ``start``: git's top level; outside git, the parent of the
    ``projects/`` folder ``start`` is or lies in; else ``start``'s own folder."""
    import subprocess  # here, not at the top: most runs include no fragment

    absolute = os.path.abspath(start)
    folder = absolute if os.path.isdir(absolute) else os.path.dirname(absolute)
    try:
        done = subprocess.run(
            ["git", "-C", folder, "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass  # no git: the folder layout says where the repository is
    at = absolute
    while os.path.dirname(at) != at:
        if os.path.basename(at) == "projects":
            return os.path.dirname(at)
        at = os.path.dirname(at)
    return folder


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


# --- one file, built for one Project ----------------------------------------------------


@dataclass(eq=False)
class Layer:
    """One file's document as built for one Project, with where each part stands.

    ``chain`` says how the Project reached it: "" for the project file itself,
    ``projects/staging.yaml:2`` for a fragment it includes at line 2,
    ``base/common.yaml:3, from projects/staging.yaml:2`` one level further.
    """

    file: str  # as the user sees it
    disk: str  # absolute, for opening and resolving includes
    data: dict
    locations: dict[Path, Location]
    key_locations: dict[Path, Location]
    written: dict[Path, str] = field(default_factory=dict)
    reported: set[Path] = field(default_factory=set)
    substituted: list = field(default_factory=list)
    chain: str = ""

    @classmethod
    def built(cls, builder: Builder, disk: str, data: dict, chain: str = "") -> Layer:
        return cls(
            builder.path,
            disk,
            data,
            builder.locations,
            builder.key_locations,
            builder.written,
            builder.reported,
            builder.substituted,
            chain,
        )

    def problem(self, message: str, where: Location) -> Problem:
        return located(self.file, where, message, self.chain)

    def key_at(self, path: Path) -> Location:
        return self.key_locations.get(path) or nearest(self.locations, path)[1] or (1, 1)


Owner = tuple[Layer, Path]


def located(file: str, where: Location, message: str, chain: str = "") -> Problem:
    """A problem at a line of ``file``; in a fragment, naming how the Project reached it."""
    if not chain:
        return Problem(file, where[0], where[1], message)
    return Problem(file, *where, f"{message} (included from {chain})", (chain,))


def grouped(problems: Iterable[Problem]) -> list[Problem]:
    """The problems, sorted, each once: the same problem in a fragment reached from
    several Projects is one line naming them all."""
    chains: dict[tuple[str, int, int, str], list[str]] = {}
    plain: set[Problem] = set()
    for problem in problems:
        if not problem.included_from:
            plain.add(problem)
            continue
        suffix = f" (included from {'; '.join(problem.included_from)})"
        base = problem.message.removesuffix(suffix)
        key = (problem.file, problem.line, problem.column, base)
        for chain in problem.included_from:
            if chain not in chains.setdefault(key, []):
                chains[key].append(chain)
    for (file, line, column, base), found in chains.items():
        ordered = tuple(sorted(found))
        plain.add(
            Problem(file, line, column, f"{base} (included from {'; '.join(ordered)})", ordered)
        )
    return sorted(plain)


# --- the effective document --------------------------------------------------------------


@dataclass(eq=False)
class Effective:
    """A merged document and, for each part of it, the layer whose text it is."""

    data: dict
    owners: dict[Path, Owner]

    @classmethod
    def of(cls, layer: Layer) -> Effective:
        return cls(layer.data, {(): (layer, ())})

    def owner(self, path: Path) -> Owner:
        """The layer a path's value was written in, and its path there."""
        return owner_of(self.owners, path)


def owner_of(owners: Mapping[Path, Owner], path: Path) -> Owner:
    prefix, (layer, there) = nearest(owners, path)
    return layer, (*there, *path[len(prefix) :])


def merge(
    own: Layer,
    included: Sequence[Effective],
    objects: Iterable[str],
    problems: list[Problem],
) -> Effective:
    """``own`` over what it includes; a conflict between two included files is a problem.

    ``objects`` are the file keys of the object kinds (merged by name, field by field).
    """
    kinds = frozenset(objects)
    merged = _Merge(kinds)
    for effective in dict.fromkeys(included):  # the same fragment listed twice: once
        merged.add(effective, problems, own)
    merged.add(Effective.of(own), problems, None)
    return Effective(merged.data, merged.owners)


class _Merge:
    def __init__(self, kinds: frozenset[str]) -> None:
        self.kinds = kinds
        self.data: dict[str, Any] = {}
        self.owners: dict[Path, Owner] = {}

    def add(self, source: Effective, problems: list[Problem], includer: Layer | None) -> None:
        """Add an included document (``includer`` is the file including it: a sibling
        of what was added before) or, with None, the including file itself, which wins."""
        wins = includer is None
        for key, value in source.data.items():
            here = self.data.get(key)
            if key not in self.data:
                self._take(source, (key,), value)
            elif key == "prune" and isinstance(value, list) and isinstance(here, list):
                self._unite(source, value, wins)
            elif key in self.kinds and isinstance(value, dict) and isinstance(here, dict):
                self._pin_children((key,), here)
                if wins:
                    self.owners[(key,)] = source.owner((key,))
                for name, fields in value.items():
                    self._object(source, key, name, fields, problems, includer)
            elif wins:
                self._take(source, (key,), value)
            elif self.owner((key,)) != source.owner((key,)):
                problems.append(self._conflict(source, (key,), includer))

    def _object(
        self,
        source: Effective,
        key: str,
        name: str,
        fields: Any,
        problems: list[Problem],
        includer: Layer | None,
    ) -> None:
        objects = self.data[key]
        path = (key, name)
        if name not in objects:
            objects[name] = fields
            self._copy_owners(source, path)
        elif includer is not None:
            if self.owner(path) != source.owner(path):
                problems.append(self._conflict(source, path, includer))
        elif isinstance(fields, (dict, type(None))) and isinstance(
            objects[name], (dict, type(None))
        ):
            # Field by field: the including file's fields replace those it includes.
            current = dict(objects[name] or {})
            self._pin_children(path, current)
            for field_name, value in (fields or {}).items():
                current[field_name] = value
                self._copy_owners(source, (*path, field_name))
            self.owners[path] = source.owner(path)
            objects[name] = current if current or fields is not None else None
        else:
            objects[name] = fields
            self._copy_owners(source, path)

    def _unite(self, source: Effective, words: list, wins: bool) -> None:
        """``prune`` lists united: a word already listed by another file is not repeated
        (a word listed twice in one file stays twice, so validation still says it)."""
        known = {repr(word) for word in self.data["prune"]}
        for index, word in enumerate(words):
            if repr(word) in known:
                continue
            self.owners[("prune", len(self.data["prune"]))] = source.owner(("prune", index))
            self.data["prune"].append(word)
        if wins:
            self._pin_children(("prune",), self.data["prune"])
            self.owners[("prune",)] = source.owner(("prune",))

    def _take(self, source: Effective, path: Path, value: Any) -> None:
        if isinstance(value, list) and path == ("prune",):
            value = list(value)  # united in place later: never change a layer's own list
        elif isinstance(value, dict) and path[0] in self.kinds:
            value = dict(value)  # objects are added to it later
        self.data[path[0]] = value
        self._copy_owners(source, path)

    def _copy_owners(self, source: Effective, path: Path) -> None:
        """The subtree at ``path`` is ``source``'s: forget whose it was before."""
        for known in [p for p in self.owners if p[: len(path)] == path]:
            del self.owners[known]
        self.owners[path] = source.owner(path)
        for known, owner in source.owners.items():
            if len(known) > len(path) and known[: len(path)] == path:
                self.owners[known] = owner

    def _pin_children(self, path: Path, children: Iterable[Any]) -> None:
        """Before ``path`` changes hands, each child keeps the owner it has."""
        keys = range(len(children)) if isinstance(children, list) else list(children)
        for child in keys:
            self.owners.setdefault((*path, child), self.owner((*path, child)))

    def owner(self, path: Path) -> Owner:
        return owner_of(self.owners, path)

    def _conflict(self, source: Effective, path: Path, includer: Layer) -> Problem:
        first_layer, first_path = self.owner(path)
        layer, there = source.owner(path)
        first = f"{first_layer.file}:{first_layer.key_at(first_path)[0]}"
        second = f"{layer.file}:{layer.key_at(there)[0]}"
        what = "an object" if len(path) == 2 else "a setting"
        message = (
            f"{schema.field_name(path)}: {what} declared by two files {includer.file} "
            f"includes, {first} and {second}; declare it in one of them"
        )
        return layer.problem(message, layer.key_at(there))


# --- following includes ------------------------------------------------------------------


class Includes:
    """Follows the includes of every Project of one load. Each file is read and parsed
    once per load; each fragment is built (substituted) once per including Project."""

    def __init__(self, reader: Reader, show: Callable[[str], str]) -> None:
        self.reader = reader
        self.show = show  # an absolute path as the user sees it
        self._parsed: dict[str, tuple[MappingNode | None, list[Problem]]] = {}
        self.fragments: dict[str, str] = {}  # real path -> shown, every fragment included

    def expand(
        self, own: Layer, variables: Variables, rules: Rules, problems: list[Problem]
    ) -> tuple[Effective, list[Layer]]:
        """The project file ``own`` merged with everything it includes, and the fragment
        layers it read (in the order first reached)."""
        walk = _Walk(self, variables, rules, problems)
        real = os.path.realpath(own.disk)
        return walk.expand(own, 0, [real]), list(walk.layers.values())

    def parsed(self, real: str, shown: str) -> tuple[MappingNode | None, list[Problem]]:
        if real not in self._parsed:
            try:
                raw = self.reader.read(real)
            except OSError as error:
                reason = (error.strerror or str(error)).lower()
                self._parsed[real] = (None, [Problem(shown, 1, 1, f"cannot read file: {reason}")])
            else:
                self._parsed[real] = read_document(raw, shown, "a fragment")
        return self._parsed[real]


class _Walk:
    """One Project's walk through its includes."""

    def __init__(
        self, includes: Includes, variables: Variables, rules: Rules, problems: list[Problem]
    ) -> None:
        self.includes = includes
        self.variables = variables
        self.rules = rules
        self.problems = problems
        self.done: dict[str, Effective] = {}  # real path -> merged fragment (diamonds)
        self.layers: dict[str, Layer] = {}
        self.tried: set[str] = set()  # every fragment counted against the limit

    def expand(self, layer: Layer, depth: int, stack: list[str]) -> Effective:
        entries = layer.data.get("include")
        included: list[Effective] = []
        listed: set[str] = set()
        if layer.chain and entries is not None and not isinstance(entries, list):
            # A project file's include is checked by the schema; a fragment's here.
            message = f"include: expected a list of paths, got {schema.describe(entries)}"
            self.problems.append(layer.problem(message, layer.locations[("include",)]))
        for index, entry in enumerate(entries if isinstance(entries, list) else ()):
            if not isinstance(entry, str) or not entry.strip():
                if layer.chain:
                    message = f"include[{index}]: expected a path, got {schema.describe(entry)}"
                    self.problems.append(
                        layer.problem(message, layer.locations[("include", index)])
                    )
                continue  # in a project file, the schema says what is wrong with it
            where = layer.locations[("include", index)]
            found = self._follow(layer, entry, where, depth, stack, listed)
            if found is not None:
                included.append(found)
        return merge(layer, included, self.rules.objects, self.problems)

    def _follow(
        self,
        layer: Layer,
        entry: str,
        where: Location,
        depth: int,
        stack: list[str],
        listed: set[str],
    ) -> Effective | None:
        def fail(reason: str) -> None:
            self.problems.append(layer.problem(f"include {schema.quote(entry)}: {reason}", where))

        if os.path.isabs(entry):
            return fail("write a path relative to this file")
        if not entry.endswith(SUFFIXES):
            return fail("a fragment is a .yaml or .yml file")
        disk = os.path.normpath(os.path.join(os.path.dirname(layer.disk), entry))
        reason = self.includes.reader.refusal(disk)
        if reason:
            return fail(reason)
        real = os.path.realpath(disk)
        shown = self.includes.show(disk)
        if real in listed:
            return fail("listed twice")
        listed.add(real)
        if real in stack:
            cycle = [self.includes.show(path) for path in stack[stack.index(real) :]]
            return fail(f"a cycle: {' includes '.join([*cycle, shown])}")
        if real in self.done:
            return self.done[real]
        if depth + 1 > MAX_DEPTH:
            return fail(f"includes nest more than {MAX_DEPTH} deep")
        if real not in self.tried and len(self.tried) >= MAX_FRAGMENTS:
            return fail(f"a Project may include at most {MAX_FRAGMENTS} fragments")
        self.tried.add(real)
        self.includes.fragments[real] = shown
        root, problems = self.includes.parsed(real, shown)
        chain = f"{layer.file}:{where[0]}" + (f", from {layer.chain}" if layer.chain else "")
        self.problems += [located(p.file, (p.line, p.column), p.message, chain) for p in problems]
        if root is None:
            return None
        builder = Builder(shown, self.variables, self.rules)
        data = builder.build(root, ())
        fragment = Layer.built(builder, disk, data, chain)
        self.problems += [fragment.problem(p.message, (p.line, p.column)) for p in builder.problems]
        for key, why in schema.FRAGMENT_REFUSED.items():
            if key in data:
                del data[key]
                message = f"{key} is not allowed in a fragment: {why}"
                self.problems.append(fragment.problem(message, fragment.key_at((key,))))
        self.layers[real] = fragment
        merged = self.expand(fragment, depth + 1, [*stack, real])
        merged.data.pop("include", None)  # consumed: the Project's own list is what shows
        self.done[real] = merged
        return merged
