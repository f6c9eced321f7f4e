"""The README's examples run, and print what the README shows.

A code block of README.md is an example when the line right before its fence is

    <!-- example: SETUP -->

and this test runs it in a fresh folder with a real shell (bash), one command at a
time, carrying the environment and the current folder from one command to the
next, as a terminal would. SETUP is one or more words, comma-separated:

- `offline` (the default): the folder is a checkout of the repository as far as
  the examples need one: a git repository holding a copy of its `projects/`,
  `base/`, `schemas/` and `tests/fixtures/`; no credentials, no API.
- `emulator`: the same, with an emulator of the demo Projects running
  (`reconciler emulator --seed demo`) and the environment that "Try it on the
  emulator" sets up (its URLs and the demo's credentials).
- `empty`: the folder starts empty.
- `one command`: only the first `$ ` line is a command; the rest is its output
  (`reconciler demo` prints the commands it runs as `$ …` lines).
- `not run: A, B`: lines starting with A or B are not run (`pip install …`, which
  the test environment has done already; `$EDITOR …`).
- `continued`: the block goes on from the example before it, as a reader who ran
  that one does: the earlier example's setup and commands are run first (their
  output is not compared), in the same terminal.

A block whose lines start with `$ ` is a transcript: each `$ ` line is a command
(a trailing `\\` continues it), and the lines under it are what it prints, stdout and
stderr together. A line `...` there stands for any lines, and `...` inside a line
for any text. A command ending in `&` runs in the background and only its first line
of output is compared (the emulator's URL); the test stops it at the end. Any
other block is a script: each line that is not a comment must exit 0.

What changes from run to run is normalised on both sides before comparing:
ids the emulator makes up (a UUID that appears in no file of the repository, by
order of appearance), timestamps, the demo's temporary folder, and local ports. An
emulator started in the background gets a free port, which then stands in for the
README's (e.g. 8000) wherever a command names it.

To add an example, put the marker before its block; nothing here changes.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconciler.demo import BUILD_COMMAND, DEMO_ENV

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
COPIED = ("projects", "base", "schemas", "zambdas", "tests/fixtures")
BIN = Path(sys.executable).parent

_MARKED = re.compile(r"^<!-- example: (?P<spec>.*?) -->\n```\w*\n(?P<body>.*?)^```$", re.M | re.S)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
_DEMO_FOLDER = re.compile(r"/\S*/reconciler-demo-[\w-]+")
_LOCAL = re.compile(r"127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class Example:
    line: int
    setup: frozenset[str]
    not_run: tuple[str, ...]
    body: str

    @property
    def id(self) -> str:
        first = next(line for line in self.body.splitlines() if line.strip())
        return f"README.md:{self.line} {first.removeprefix('$ ')[:40]}"


def examples(text: str) -> list[Example]:
    found = []
    for match in _MARKED.finditer(text):
        words, _, skipped = match["spec"].partition("not run:")
        setup = frozenset(w.strip() for w in words.split(",") if w.strip())
        unknown = setup - {"offline", "emulator", "empty", "one command", "continued"}
        assert not unknown, f"README.md:{text.count(chr(10), 0, match.start()) + 1}: {unknown}"
        not_run = tuple(s.strip() for s in skipped.split(",") if s.strip())
        line = text.count("\n", 0, match.start()) + 2  # the fence's line
        found.append(Example(line, setup, not_run, match["body"]))
    return found


EXAMPLES = examples(README.read_text(encoding="utf-8"))


def _stable_ids() -> set[str]:
    """Ids written in the repository's files (the seed, the examples): never made up."""
    ids: set[str] = set()
    for folder in ("projects", "reconciler/data", "tests/fixtures"):
        for path in (ROOT / folder).rglob("*.y*ml"):
            ids |= set(_UUID.findall(path.read_text(encoding="utf-8", errors="replace")))
    return ids


STABLE = _stable_ids()


# --- running -------------------------------------------------------------------------


@dataclass
class Session:
    """One terminal: a folder, an environment, background jobs, the emulator's ports."""

    folder: Path
    state: Path
    ports: dict[str, str] = field(default_factory=dict)  # README port -> the real one
    jobs: list[subprocess.Popen] = field(default_factory=list)

    @classmethod
    def start(cls, tmp_path: Path, env: dict[str, str]) -> Session:
        folder, state = tmp_path / "work", tmp_path / "state"
        folder.mkdir()
        state.mkdir()
        (state / "env").write_text(
            "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()), encoding="utf-8"
        )
        (state / "cwd").write_text(str(folder), encoding="utf-8")
        return cls(folder, state)

    def _script(self, command: str) -> str:
        # The shell's variables (exported or not) as the last command left them; bash's
        # own read-only ones cannot be set again, hence the silenced errors.
        return f'source {self.state}/env 2>/dev/null\ncd "$(cat {self.state}/cwd)"\n{command}\n'

    def run(self, command: str) -> tuple[int, str]:
        script = self._script(self.localise(command)) + (
            f"code=$?\ndeclare -p > {self.state}/env\npwd > {self.state}/cwd\nexit $code\n"
        )
        # Its own process group, ended with it: nothing a command leaves running (a job
        # the README meant for the background) can outlive the test. Output goes to a
        # file, as a terminal would take it, so such a job cannot hold it open.
        with open(self.state / "output", "w+", encoding="utf-8") as output:
            shell = subprocess.Popen(
                ["bash", "--noprofile", "--norc", "-c", script],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={},
                start_new_session=True,
            )
            try:
                shell.wait(timeout=120)
            finally:
                _end_group(shell)
            output.seek(0)
            return shell.returncode, output.read()

    def background(self, command: str, readme_line: str | None) -> str:
        """Start a job; its first line. An emulator gets a free port, which then stands
        in for the README's wherever a command names it."""
        command = _without_comment(command).removesuffix("&").strip()
        emulator = re.search(r"\breconciler emulator\b", command)
        given = re.search(r"\s--port[ =](\d+)", command)
        if emulator:
            command = re.sub(r"\s--port[ =]\d+", "", command) + " --port 0"
        job = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-c", self._script(f"exec {command}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            env={},
            start_new_session=True,
        )
        self.jobs.append(job)
        first = (job.stdout.readline() if job.stdout else "").rstrip("\n")
        real = _LOCAL.search(first)
        if emulator and real:
            shown = _LOCAL.search(readme_line or "")
            readme_port = shown[1] if shown else given[1] if given else "8000"
            self.ports[readme_port] = real[1]
        return first

    def localise(self, command: str) -> str:
        for readme, real in self.ports.items():
            command = command.replace(f"127.0.0.1:{readme}", f"127.0.0.1:{real}")
        return command

    def as_in_readme(self, output: str) -> str:
        for readme, real in self.ports.items():
            output = output.replace(f"127.0.0.1:{real}", f"127.0.0.1:{readme}")
        return output

    def close(self) -> None:
        for job in self.jobs:
            _end_group(job)
            if job.stdout:
                job.stdout.close()


def _end_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group this test started (the emulator stops cleanly on
    it), SIGKILL to what is left after 10 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while True:
        process.poll()  # reap the leader, or the group lives on as its zombie
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            deadline = math.inf
        time.sleep(0.05)
    process.wait()


def _environment() -> dict[str, str]:
    """A terminal's environment with nothing of this machine's credentials or CI."""
    keep = {k: os.environ[k] for k in ("HOME", "LANG", "LC_ALL", "TMPDIR") if k in os.environ}
    return {
        **keep,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        # One stream as a terminal shows it: stdout and stderr in the order written.
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "100",
    }


# What "Try it on the emulator" exports, which `emulator` examples take as given.
TRY_IT_EXPORTS = {
    "OYSTEHR_PROJECT_API_URL": "http://127.0.0.1:8000/v1",
    "OYSTEHR_AUTH_URL": "http://127.0.0.1:8000/oauth/token",
    **DEMO_ENV,
}


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    running = Session.start(tmp_path, _environment())
    yield running
    running.close()


def _prepare(example: Example, session: Session) -> None:
    if "continued" in example.setup:
        index = EXAMPLES.index(example)
        assert index > 0, f"README.md:{example.line}: `continued`, but no example before it"
        before = EXAMPLES[index - 1]
        _prepare(before, session)
        _run(before, session, check=False)
        return
    if "empty" not in example.setup:
        for name in COPIED:
            shutil.copytree(ROOT / name, session.folder / name)
        git = "git -c user.name=readme -c user.email=readme@example.com"
        code, output = session.run(f"git init -q && git add -A && {git} commit -qm checkout")
        assert code == 0, output
    if "emulator" in example.setup:
        session.background("reconciler emulator --seed demo -q &", "http://127.0.0.1:8000")
        line = " ".join(f"{k}={shlex.quote(v)}" for k, v in TRY_IT_EXPORTS.items())
        assert session.run(f"export {line}")[0] == 0
        # As "Try it" does: the sandbox's function zip, a build output, is built.
        assert session.run(BUILD_COMMAND)[0] == 0


# --- comparing -----------------------------------------------------------------------


def normalise(text: str) -> list[str]:
    made_up: dict[str, str] = {}

    def one_id(match: re.Match[str]) -> str:
        if match[0] in STABLE:
            return match[0]
        return made_up.setdefault(match[0], f"<id {len(made_up) + 1}>")

    text = _UUID.sub(one_id, text)
    text = _TIME.sub("<time>", text)
    text = _DEMO_FOLDER.sub("<temporary folder>", text)
    text = _LOCAL.sub("127.0.0.1:<port>", text)
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def matches(expected: list[str], actual: list[str]) -> bool:
    """`...` alone on a line matches any lines (even none); inside a line, any text."""
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head.strip() == "..." or head.strip().startswith("...   ("):
        return any(matches(rest, actual[i:]) for i in range(len(actual) + 1))
    if not actual:
        return False
    pattern = ".*".join(re.escape(part) for part in head.split("..."))
    return bool(re.fullmatch(pattern, actual[0])) and matches(rest, actual[1:])


def _without_comment(command: str) -> str:
    """The command without a trailing `# comment` (a `#` outside quotes, after a blank)."""
    quote = None
    for i, char in enumerate(command):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i].rstrip()
    return command.rstrip()


def transcript(body: str, one_command: bool = False) -> list[tuple[str, list[str]]]:
    """(command, the lines the README shows under it), in order."""
    steps: list[tuple[str, list[str]]] = []
    lines = iter(body.splitlines())
    for line in lines:
        if line.startswith("$ ") and not (one_command and steps):
            command = line[2:]
            while command.endswith("\\"):
                command += "\n" + next(lines)
            steps.append((command, []))
        else:
            assert steps, f"output before the first command: {line!r}"
            steps[-1][1].append(line)
    return steps


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_the_readme_example_runs_as_shown(example: Example, session: Session):
    _prepare(example, session)
    _run(example, session, check=True)


def _run(example: Example, session: Session, *, check: bool) -> None:
    """Run an example's commands; with `check`, each as the README shows it."""
    if not any(line.startswith("$ ") for line in example.body.splitlines()):
        for command in example.body.splitlines():
            if not command.strip() or command.lstrip().startswith("#"):
                continue
            if command.startswith(example.not_run):
                continue
            code, output = session.run(command)
            assert code == 0 or not check, f"README.md:{example.line}: {command}\n{output}"
        return
    for command, shown in transcript(example.body, "one command" in example.setup):
        if command.startswith(example.not_run):
            continue
        if _without_comment(command).endswith("&"):
            output = session.background(command, shown[0] if shown else None)
            shown = shown[:1]
        else:
            output = session.run(command)[1]
        if not check:
            continue
        want, got = normalise("\n".join(shown)), normalise(session.as_in_readme(output))
        assert matches(want, got), (
            f"README.md:{example.line}: $ {command}\n"
            + "--- the README shows:\n"
            + "\n".join(want)
            + "\n--- it printed:\n"
            + "\n".join(got)
        )


def test_the_readme_has_examples_of_every_kind():
    setups = [example.setup for example in EXAMPLES]
    assert frozenset({"offline"}) in setups and any("emulator" in s for s in setups)
    for command in ("validate", "plan", "export", "init", "demo", "emulator"):
        assert any(f"reconciler {command}" in e.body for e in EXAMPLES), command


def test_emulator_examples_assume_what_try_it_on_the_emulator_exports():
    readme = README.read_text(encoding="utf-8")
    section = readme[readme.index("## Try it on the emulator") :]
    (try_it,) = [e for e in examples(section) if "$ reconciler emulator --seed demo" in e.body]
    exported: dict[str, str] = {}
    for command, _ in transcript(try_it.body):
        if command.startswith("export "):
            words = shlex.split(command.removeprefix("export "))
            exported.update(word.split("=", 1) for word in words)
    assert exported == TRY_IT_EXPORTS


def test_nothing_a_command_starts_outlives_it(session: Session):
    code, output = session.run("sleep 300 & echo $! > pid")
    assert (code, output) == (0, "")
    pid = int((session.folder / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_matcher_and_the_normaliser():
    assert matches(["a", "...", "z"], ["a", "b", "c", "z"])
    assert matches(["a", "...", "z"], ["a", "z"])
    assert not matches(["a", "...", "z"], ["a", "b"])
    assert matches(['{"id":...,"name":"x",...}'], ['{"id":"1","name":"x","more":2}'])
    assert not matches(["a"], ["a", "b"])
    made_up = "00000000-1111-4222-8333-444444444444"
    assert normalise(f"{made_up} fd9b1113-4bd2-4dad-8631-a95ba035dfda {made_up}\n\n") == [
        "<id 1> fd9b1113-4bd2-4dad-8631-a95ba035dfda <id 1>"
    ]
    assert normalise("at 2026-11-28T14:05:30Z in /tmp/reconciler-demo-k0aqj7r_/projects") == [
        "at <time> in <temporary folder>/projects"
    ]
