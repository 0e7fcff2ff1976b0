"""`chunkd new --lang LANG --world WORLD NAME`: a guest project that builds with one command
(`./build.sh`) and runs with one (`chunkd run --wasm NAME.wasm --dir local=data local sample.txt`).

The files come from chunkd/templates (plain text, `{{NAME}}`-style placeholders); the WIT is
the one `chunkd wit` prints (chunkd.cli.wit_dir)."""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"

LANGS = ("python", "rust", "js", "c")
WORLDS = ("consumer", "consumer-with-events", "consumer-streams")
LANG_TITLES = {"python": "Python (componentize-py)", "rust": "Rust (wit-bindgen, wasm32-wasip2)",
               "js": "JavaScript (componentize-js; componentize-qjs for consumer-streams)", "c": "C (clang, jco)"}

# lang -> [(template path under TEMPLATES, formatted with the world; path in the new project)]
_LANG_FILES: dict[str, list[tuple[str, str]]] = {
    "python": [("python/{world}.py.tmpl", "app.py"), ("python/build.sh", "build.sh")],
    "rust": [("rust/Cargo.toml", "Cargo.toml"), ("rust/{world}.rs.tmpl", "src/lib.rs"), ("rust/build.sh", "build.sh")],
    "js": [("js/{world}.js.tmpl", "app.js"), ("js/{build}", "build.sh")],
    "c": [("c/{world}.c.tmpl", "app.c"), ("c/componentize.mjs", "componentize.mjs"), ("c/build.sh", "build.sh")],
}
# JavaScript's streams world is built with componentize-qjs (async exports), the others with
# componentize-js
_JS_BUILD = {"consumer-streams": "build-streams.sh"}
SUPPORTED: dict[str, tuple[str, ...]] = {
    "python": WORLDS,
    "rust": WORLDS,
    "js": WORLDS,
    "c": ("consumer", "consumer-with-events"),
}
# why a combination is missing
_WHY_NOT = {
    ("c", "consumer-streams"): "the C template writes the canonical ABI by hand (no libc, no wit-bindgen), "
                               "and consume in consumer-streams is an async export taking a stream<u8>: that "
                               "needs the component model's async ABI (task.return, stream.read, waitable sets, "
                               "a callback export), which only wit-bindgen's C generator (wit-bindgen-cli) "
                               "with wasi-sdk's libc produces, and neither is installed here",
}
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_FAILED = 3


class ScaffoldError(Exception):
    """A refusal, with the text to show (exit code 2)."""


def supported_text() -> str:
    return "; ".join(f"{lang}: {', '.join(SUPPORTED[lang])}" for lang in LANGS)


def check(lang: str, world: str, name: str) -> None:
    if lang not in LANGS:
        raise ScaffoldError(f"unknown language {lang!r}: choose one of {', '.join(LANGS)}")
    if world not in WORLDS:
        raise ScaffoldError(f"unknown world {world!r}: choose one of {', '.join(WORLDS)}")
    if world not in SUPPORTED[lang]:
        why = _WHY_NOT.get((lang, world))
        raise ScaffoldError(f"--lang {lang} --world {world} is not supported"
                            + (f": {why}" if why else "")
                            + f". Supported: {supported_text()}")
    if not _NAME_RE.match(name):
        raise ScaffoldError(f"bad name {name!r}: a letter, then letters, digits, '-' or '_' "
                            "(it names the folder, the component and NAME.wasm)")


def _fill(text: str, values: dict[str, str]) -> str:
    for k, v in values.items():
        text = text.replace("{{" + k + "}}", v)
    return text


def create(lang: str, world: str, name: str, parent: Path) -> Path:
    """Writes parent/name/ and returns it; ScaffoldError for a refusal, OSError if writing fails."""
    from chunkd.cli import WIT_FILES, wit_dir

    check(lang, world, name)
    dest = parent / name
    if dest.exists() or dest.is_symlink():
        raise ScaffoldError(f"{dest} already exists: choose another NAME or remove it")
    wit = wit_dir()
    missing = [n for n in WIT_FILES if not (wit / n).is_file()]
    if missing:
        raise ScaffoldError(f"the WIT package is not installed ({wit / missing[0]} is missing)")
    values = {"NAME": name, "WORLD": world, "LANG": LANG_TITLES[lang], "CRATE": name.replace("-", "_")}
    values["TOOLS"] = _fill((TEMPLATES / lang / "TOOLS.md").read_text().strip(), values)
    files: list[tuple[str, str]] = [(f"wit/{n}", (wit / n).read_text()) for n in WIT_FILES]
    build = _JS_BUILD.get(world, "build.sh")
    for src, rel in _LANG_FILES[lang]:
        files.append((rel, _fill((TEMPLATES / src.format(world=world, build=build)).read_text(), values)))
    for src, rel in (("common/README.md", "README.md"), ("common/chunkd.toml", "chunkd.toml"),
                     ("common/sample.txt", "data/sample.txt")):
        files.append((rel, _fill((TEMPLATES / src).read_text(), values)))
    files.append((".gitignore", f"/{name}.wasm\n/target/\n/state/\n/node_modules/\n"))
    dest.mkdir(parents=True)
    try:
        for rel, text in files:
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if rel.endswith(".sh"):
                path.chmod(0o755)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def cmd_new(lang: str, world: str, name: str) -> int:
    try:
        dest = create(lang, world, name, Path(os.getcwd()))
    except ScaffoldError as e:
        print(f"chunkd new: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"chunkd new: cannot write {name}/: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILED
    print(f"created {dest.name}/ ({lang}, world {world}):\n"
          f"  cd {dest.name} && ./build.sh\n"
          f"  chunkd run --wasm {name}.wasm --dir local=data local sample.txt")
    return EXIT_OK
