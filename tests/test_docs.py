"""Every command the documentation shows is accepted by its script: a renamed or removed flag cannot leave a
README, DATASETS or RESULTS command that stops at once.

Each `python <script>.py ...` in the code of README.md, DATASETS.md and RESULTS.md is parsed by the script itself:
the training scripts by their own parse_args (with its checks), the others by their argparse parser, stopped right
after it parsed. Placeholders (`<name>`, `DIR`, `$seed`) stand for any value; `[--flag value]` is an optional part,
parsed too. A command of a bad-input table that the training scripts refuse while parsing must be refused with
the very sentence the table shows.
"""
import argparse
import re
import shlex
from pathlib import Path

import pytest

import finetune
import pretrain

ROOT = Path(__file__).resolve().parents[1]
DOCS = [p for p in (ROOT / name for name in ('README.md', 'DATASETS.md', 'RESULTS.md')) if p.exists()]
COMMAND = re.compile(r'python ([\w/]+\.py)([^`\n|&;#]*)')
PLACEHOLDER = re.compile(r'^([A-Z][A-Z_]*|<[^>]*>|\$\w+|\$\{\w+\})$')  # DIR, N, <name>, $seed: any value


def code_spans(text):
    """The text of every fenced block (lines joined at a trailing backslash, a loop variable replaced by its first
    value) and of every inline `code` span (which Markdown may wrap over two lines)."""
    blocks = re.findall(r'```[^\n]*\n(.*?)```', text, re.S)
    for block in blocks:
        block = block.replace('\\\n', ' ')
        for name, values in re.findall(r'for (\w+) in ([^;]+); do', block):
            block = re.sub(rf'\$\{{?{name}\}}?\b', shlex.split(values)[0], block)
        yield block
    for span in re.findall(r'`([^`]+)`', re.sub(r'```.*?```', '', text, flags=re.S)):
        yield span.replace('\n', ' ')


def commands(text):
    """(script, arguments) of every `python <script>.py ...` in the text; `[--flag value]` is parsed as given, a
    bracketed word without a flag (`[flags]`) is left out."""
    for match in COMMAND.finditer(re.sub(r'\[[^-\]][^\]]*\]', ' ', re.sub(r'<[^>]*>', 'X', text))):
        arguments = match.group(2).replace('[', ' ').replace(']', ' ').replace('…', 'x')
        yield match.group(1), tuple(PLACEHOLDER.sub('1', a) for a in shlex.split(arguments))


def refusals(text):
    """{(script, arguments): sentence} of the bad-input tables: rows '| what: `command` | sentence | exit code |'."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split(' | ')]
        if line.startswith('|') and len(cells) >= 3 and cells[-1].isdigit():
            for command in commands(cells[0]):
                rows[command] = cells[-2]
    return rows


SHOWN = {(doc.name, *command) for doc in DOCS for span in code_spans(doc.read_text()) for command in commands(span)}
COMMANDS = sorted(SHOWN)
REFUSED = {command: sentence for doc in DOCS for command, sentence in refusals(doc.read_text()).items()}


class Parsed(Exception):
    """Raised by the patched parser once the command line parsed."""


def test_the_docs_show_commands_of_every_script():
    scripts = {script for _, script, _ in COMMANDS}
    assert {'pretrain.py', 'finetune.py', 'evaluate.py', 'data.py', 'toyworld.py'} <= scripts


@pytest.mark.parametrize('doc, script, argv', COMMANDS, ids=[f'{d}:{s} {" ".join(a)}'[:90] for d, s, a in COMMANDS])
def test_shown_command_parses(doc, script, argv, monkeypatch):
    if script in ('pretrain.py', 'finetune.py'):
        try:
            (pretrain if script == 'pretrain.py' else finetune).parse_args(list(argv))
        except SystemExit as refusal:  # --help exits 0; a row of a bad-input table: the sentence the table shows
            if '--help' in argv:
                assert refusal.code == 0
            else:
                assert (script, argv) in REFUSED and str(refusal) == REFUSED[script, argv], f'{doc}: {refusal}'
        return
    parse = argparse.ArgumentParser.parse_args

    def parse_and_stop(parser, args=None, namespace=None):
        parse(parser, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', parse_and_stop)
    if '/' in script:  # a benchmark imports its folder's shared timing
        monkeypatch.syspath_prepend(str((ROOT / script).parent))
    module = __import__(Path(script).stem) if '/' not in script else _load(ROOT / script)
    with pytest.raises(SystemExit if '--help' in argv else Parsed) as stop:
        module.main(list(argv))
    assert stop.type is Parsed or stop.value.code == 0


def _load(path):
    """A benchmark script as a module (benchmarks/ is not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
