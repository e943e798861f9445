"""README.md and docs/ cannot go stale silently: every command-line option, Make target and Make variable they name
exists, every papermill parameter they pass is the notebook's, every relative link resolves, the runs they say the
default report trains are the runs the code plans, and the README stays a newcomer's page."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from vaehelpers.__main__ import main
from vaehelpers.sweep import Sweep

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PENDING: dict[str, str] = {}
"""Pages the README's index links before they exist. An entry must go once its page is there (a test says so)."""
SUBCOMMANDS = ("report", "bench", "board", "summary")
FOREIGN = {  # options of other tools that the pages name, with the tool
    "--native-bf16": "pytest, tests/conftest.py", "--strict-markers": "pytest",
    "--dist": "pytest-xdist", "--no-loadscope-reorder": "pytest-xdist", "--dry-run": "pip", "--report": "pip",
    "--index-url": "pip", "--no-index": "pip", "--KernelManager.transport": "jupyter lab", "--load_fast": "tensorboard",
}
NUMBERS = {"six": 6, "eight": 8, "nine": 9, "ten": 10, "twelve": 12}
OPTION = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*(?:\.[A-Za-z][\w-]*)*")


def _text(page: Path) -> str:
    return page.read_text()


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _commands(text: str) -> list[str]:
    """The pages' commands: each line of a fenced block (continuation lines joined) and each inline code span."""
    pieces = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
        pieces += [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return pieces + re.findall(r"`([^`\n]+)`", _prose(text))


def _prose(text: str) -> str:
    return re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)


def _output(text: str) -> list[str]:
    """What the pages show a command print: their indented lines."""
    return [line.strip() for line in _prose(text).splitlines() if line.startswith("    ")]


def _options(sub: str, capsys) -> set[str]:
    """The options of ``python -m vaehelpers <sub>``, from its --help."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main([sub, "--help"])
    assert done.value.code == 0
    return set(OPTION.findall(capsys.readouterr().out))


@pytest.fixture(scope="module")
def makefile() -> dict:
    """The Makefile's targets and its user variables (those set with ?=, which a command line overrides)."""
    text = (ROOT / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY:(.*)$", text, re.M).group(1).split())
    targets = set(re.findall(r"^([a-z][\w-]*):(?!=)", text, re.M))
    return {"phony": phony, "targets": targets, "variables": set(re.findall(r"^([A-Z_]+) \?=", text, re.M))}


def test_every_option_the_pages_name_exists_in_its_command(capsys):
    options = {sub: _options(sub, capsys) for sub in SUBCOMMANDS}
    known = set().union(*options.values())
    used_foreign, problems = set(), []
    for page in PAGES:
        text = _text(page)
        for option in OPTION.findall(text):
            if option in FOREIGN:
                used_foreign.add(option)
            elif option not in known:
                problems.append(f"{_name(page)}: {option} is no option of python -m vaehelpers")
        for piece in _commands(text) + _output(text):  # a command line: its options are its subcommand's
            command = re.search(r"-m vaehelpers (\w+)(.*)", piece)
            if command and command.group(1) not in SUBCOMMANDS:
                problems.append(f"{_name(page)}: `{piece}` names no subcommand of python -m vaehelpers")
            elif command:
                problems += [f"{_name(page)}: `{piece}`: {o} is no option of {command.group(1)}"
                             for o in OPTION.findall(command.group(2)) if o not in options[command.group(1)]
                             and not piece.split(command.group(0))[0].endswith("PYTEST_ARGS=")]
    assert not problems, "\n".join(problems)
    assert used_foreign == set(FOREIGN), f"no page names {set(FOREIGN) - used_foreign}: take them out of FOREIGN"
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    assert '"--native-bf16"' in conftest  # the one pytest option of this project's own


def test_the_option_check_finds_an_option_that_does_not_exist(capsys):
    assert "--kl-weights" in _options("report", capsys) and "--no-pdf" in _options("report", capsys)
    assert "--kl-weight" not in _options("report", capsys) and "--port" not in _options("report", capsys)
    assert OPTION.findall("run `python -m vaehelpers board --runs-dir x --port 6006`.") == ["--runs-dir", "--port"]


def _make_words(piece: str) -> list[list[str]]:
    """The words after each `make` of a command line, up to the end of that command (a comment, &&, ;, |)."""
    try:
        words = shlex.split(piece, comments=True)
    except ValueError:  # an inline span that is part of a command
        words = piece.split()
    calls, current = [], None
    for word in words:
        if word in ("&&", "||", ";", "|"):
            current = None
        elif word.endswith(";") and current is not None:
            current.append(word[:-1])
            current = None
        elif word == "make":
            current = []
            calls.append(current)
        elif current is not None:
            current.append(word)
    return calls


def test_every_make_target_and_variable_the_pages_name_exists(makefile):
    problems = []
    for page in PAGES:
        for piece in _commands(_text(page)):
            for words in _make_words(piece):
                for word in words:
                    if re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", word, re.S):
                        if word.split("=")[0] not in makefile["variables"]:
                            problems.append(f"{_name(page)}: `{piece}`: {word.split('=')[0]} is no Make variable")
                    elif not word.startswith("-") and word not in makefile["targets"]:
                        problems.append(f"{_name(page)}: `{piece}`: {word} is no Make target")
    assert not problems, "\n".join(problems)


def test_the_make_check_reads_targets_and_variables_of_a_command():
    assert _make_words('make test PYTEST_ARGS="-k explore -x"   # one') == [["test", "PYTEST_ARGS=-k explore -x"]]
    assert _make_words("cd x && time make report DATA=a.npz; make clean") == [["report", "DATA=a.npz"], ["clean"]]


def test_the_readme_lists_every_make_target_and_variable(makefile):
    readme = _text(ROOT / "README.md")
    assert makefile["phony"] <= makefile["targets"]
    missing = [t for t in sorted(makefile["phony"]) if f"`make {t}`" not in readme]
    missing += [v for v in sorted(makefile["variables"]) if f"| `{v}` |" not in readme]
    assert not missing, f"README.md's tables lack {missing}"
    table = {m for m in re.findall(r"^\| `([A-Z_]+)` \|", readme, re.M)}
    assert table <= makefile["variables"], table - makefile["variables"]


def test_every_papermill_parameter_is_the_notebooks():
    problems = []
    for page in PAGES:
        for piece in _commands(_text(page)):
            call = re.search(r"papermill (notebooks/\w+\.ipynb) \S+((?: -p \S+ \S+)*)", piece)
            if not call:
                continue
            cells = json.loads((ROOT / call.group(1)).read_text())["cells"]
            source = "".join(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))["source"])
            names = set(re.findall(r"^(\w+)\s*[:=]", source, re.M))
            problems += [f"{_name(page)}: {n} is no parameter of {call.group(1)}"
                         for n in re.findall(r"-p (\S+)", call.group(2)) if n not in names]
            assert re.findall(r"-p (\S+)", call.group(2)), piece
    assert not problems, "\n".join(problems)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")


def _links(text: str) -> list[str]:
    prose = re.sub(r"`[^`\n]+`", "", _prose(text))
    return re.findall(r"\]\(([^)\s]+)\)", prose)


def test_every_relative_link_and_anchor_resolves():
    problems = []
    for page in PAGES:
        for link in _links(_text(page)):
            if re.match(r"[a-z]+:", link):  # https:, mailto:
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                if str(target.relative_to(ROOT)) not in PENDING:
                    problems.append(f"{_name(page)}: {link} does not exist")
                continue
            if anchor:
                headings = re.findall(r"^#+ (.+)$", target.read_text(), re.M)
                if anchor not in {_slug(h) for h in headings}:
                    problems.append(f"{_name(page)}: {link}: no heading of {target.name} has the anchor #{anchor}")
    assert not problems, "\n".join(problems)
    assert not [p for p in PENDING if (ROOT / p).exists()], "a pending page is there now: take it out of PENDING"


def test_the_link_check_fails_on_a_broken_link_and_a_broken_anchor(tmp_path):
    assert _links("see [data](docs/data.md#the-cache) and `[x](no.md)`\n```\n[y](no.md)\n```\n") == [
        "docs/data.md#the-cache"]
    assert _slug("What `reports/` holds") == "what-reports-holds" and _slug("Make targets and variables") == \
        "make-targets-and-variables"
    assert "the-cache" in {_slug(h) for h in re.findall(r"^#+ (.+)$", _text(ROOT / "docs" / "data.md"), re.M)}
    assert "the-cach" not in {_slug(h) for h in re.findall(r"^#+ (.+)$", _text(ROOT / "docs" / "data.md"), re.M)}


def _planned_sweep(monkeypatch, command: str = "make report") -> Sweep:
    """The sweep a documented command plans: ``make report [VAR=value ...]`` as `make -n` prints it, or
    ``python -m vaehelpers report ...``, run up to the point where the report's sweep is made, and stopped there."""
    if command.startswith("make "):
        printed = subprocess.run(["make", "-n", "-o", ".venv/.installed", *shlex.split(command)[1:]], cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout.replace("\\\n", " ")
        command = next(line for line in printed.splitlines() if "-m vaehelpers report" in line)
    args = shlex.split(command.split("-m vaehelpers ", 1)[1])

    class Planned(Exception):
        pass

    made = []
    of = Sweep.of.__func__

    def planned(cls, *a, **k):
        made.append(of(cls, *a, **k)[0])
        raise Planned

    with monkeypatch.context() as patch:
        patch.setattr(Sweep, "of", classmethod(planned))
        with pytest.raises(Planned):
            main(args)
    return made[0]


def test_the_runs_a_documented_command_is_said_to_train_are_the_runs_it_plans(monkeypatch):
    """`make report DATA=... # 6 runs` in a code block, or "(36 here)" after it: planned as the command line would."""
    checked = []
    for page in PAGES:
        for block, after in re.findall(r"```bash\n(.*?)```\n+([^\n]*)", _text(page), re.S):
            commands = [c for c in block.replace("\\\n", " ").splitlines()
                        if re.match(r"\s*(make report|\S*python -m vaehelpers report)\b", c)]
            for command in commands:
                said = re.search(r"#\s*(\d+) runs\b", command)
                if said:
                    checked.append((_name(page), command.split("#")[0].strip(), int(said.group(1))))
            here = re.search(r"\((\d+) here\)", after)
            if here and commands:
                checked.append((_name(page), commands[-1].split("#")[0].strip(), int(here.group(1))))
    assert len(checked) >= 3, checked  # the README's default report, its own data, its Slurm sweep
    wrong = [(page, command, said, len(_planned_sweep(monkeypatch, command).runs()))
             for page, command, said in checked if said != len(_planned_sweep(monkeypatch, command).runs())]
    assert not wrong, wrong


def test_the_runs_the_pages_say_the_default_report_trains_are_the_runs_it_plans(monkeypatch):
    sweep = _planned_sweep(monkeypatch)
    count = len(sweep.runs())
    said = []
    for page in PAGES:
        text = " ".join(_text(page).split())
        for number in re.findall(rf"[Dd]efault report\b[^.:]{{0,40}}? (\d+|{'|'.join(NUMBERS)}) runs\b", text):
            said.append((_name(page), NUMBERS.get(number, number)))
        for line in re.findall(r"== plan: \d+ runs \([^)]*\)", text):
            assert line == f"== plan: {count} runs ({sweep.describe()})", (_name(page), line)
            said.append((_name(page), count))
    assert ("README.md", str(count)) in said or ("README.md", count) in said, said
    assert all(int(n) == count for _, n in said), said


def test_the_readme_is_a_first_page():
    readme = _text(ROOT / "README.md")
    lines = readme.splitlines()
    assert len(lines) <= 150, len(lines)
    picture = re.search(r"!\[[^\]]+\]\((docs/[\w-]+\.png)\)", readme)
    assert picture and readme[: picture.start()].count("\n") < 10  # near the top
    png = (ROOT / picture.group(1)).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) < 300_000, len(png)
    index = readme.split("## Documentation")[1]
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)\)", index))
    pages = {_name(p) for p in PAGES[1:]} | set(PENDING)
    assert linked == pages, (linked ^ pages)


HISTORY = re.compile(r"\bthis change\b|today's main|\bthe issue\b|\bbefore the tiers\b|\bone earlier version\b|"
                     r"\bmissed by\b|\btarget [≥≤]", re.I)


def _hashes(text: str) -> list[str]:
    """What looks like a commit: 7 to 40 hexadecimal digits standing alone, letters and digits both."""
    return [h for h in re.findall(r"(?<![\w/.-])[0-9a-f]{7,40}(?![\w-])", text)
            if re.search(r"\d", h) and re.search(r"[a-f]", h)]


def test_no_page_speaks_of_commits_or_how_the_work_went():
    found = [(_name(p), m) for p in PAGES for m in HISTORY.findall(_text(p)) + _hashes(_text(p))]
    assert not found, found
    assert _hashes("(commit 806cf12) and runs/x_kl1_fp32_c7f31a79 and 2026-12-06 and 0600") == ["806cf12"]


def test_the_code_points_only_to_readme_sections_and_pages_that_exist():
    readme = _text(ROOT / "README.md")
    problems = []
    for source in [*(ROOT / "vaehelpers").glob("*.py"), *(ROOT / "tests").glob("*.py"), ROOT / "Makefile"]:
        text = re.sub(r'"\s*\n\s*"', "", source.read_text())  # a string continued on the next line, joined
        problems += [f"{source.name}: README has no {quoted!r}" for quoted in
                     re.findall(r"README, \\?\"([^\"\\]+)\\?\"", text) if quoted not in readme]
        problems += [f"{source.name}: {page} does not exist" for page in re.findall(r"\bdocs/[\w-]+\.md\b", text)
                     if not (ROOT / page).exists() and page not in PENDING]
        problems += [f"{source.name}: {page} has no heading {heading!r}" for page, heading in
                     re.findall(r"\b(docs/[\w-]+\.md), \\?\"([^\"\\]+)\\?\"", text) if (ROOT / page).exists()
                     and heading not in re.findall(r"^#+ +(.+?) *$", (ROOT / page).read_text(), re.M)]
    assert not problems, "\n".join(problems)


@pytest.mark.xdist_group("built")  # the tiny report of conftest's `built`, made once on that worker
def test_the_picture_is_drawn_from_a_reports_runs(built, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("picture", ROOT / "scripts" / "picture.py")
    picture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(picture)
    runs = tmp_path / "runs"  # the report's runs, and a damaged folder, which is said and left out
    runs.mkdir()
    for folder in (built.parent / "runs").iterdir():
        (runs / folder.name).symlink_to(folder)
    (runs / "damaged").mkdir()
    (runs / "damaged" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "three.png"
    assert picture.main([str(runs), str(out)]) == 0
    said, warned = capsys.readouterr()
    assert "left out: " in warned and "damaged" in warned, warned
    assert all(f"_kl{w}_" in said for w in ("1", "100", "0")) and "sigma" not in said and "seed0" in said, said
    from PIL import Image

    image = Image.open(out)
    assert image.width > 3 * image.height and 0 < out.stat().st_size < 300_000
    with pytest.raises(SystemExit, match="no finished runs of KL weights 1, 100 and 0"):
        picture.main([str(tmp_path), str(tmp_path / "none.png")])
    with pytest.raises(SystemExit, match=r"is not a runs folder: run `make report` first"):  # a fresh clone's
        picture.main([str(tmp_path / "runs-never-made"), str(tmp_path / "none.png")])
    for folder in runs.glob("*_kl100_*"):
        folder.unlink()
    with pytest.raises(SystemExit, match=r"\(only of weight 1, 0\) on the built-in faces"):  # says what is missing
        picture.main([str(runs), str(tmp_path / "none.png")])
    assert not (tmp_path / "none.png").exists()
