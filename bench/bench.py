"""Benchmark weightport against its floor and the route it replaces (Keras), in one run.

What is measured, each command as its own child process, wall time and peak RSS:

- `weightport convert` (with its default verification) of `keras.applications` models with
  hundreds of small tensors and a global-pooling head (ResNet50, DenseNet121, EfficientNetB0,
  MobileNetV2, weights=None) into their fully-convolutional twins (the head's Dense -> a 1x1
  conv), from a Keras 3 `.keras` (-> `.weights.h5`) and a tf_keras whole-model `.h5` (-> `.h5`),
  the `.keras` one also with `--score-map`;
- the floor of each: start Python and import h5py and numpy, then `cp` the source and `sync` the
  copy (what any Python tool pays that writes a durable copy of these bytes);
- VGG16 (138,357,544 float32 values, ~553 MB, 32 tensors): legacy `.h5` to `.h5` and to
  `.weights.h5`, `.keras` to `.weights.h5`, with and without verification, against `cp` and
  `cp` + `sync` (`--compression` adds the lzf / gzip outputs);
- torchvision's VGG16 state dict (`--skip-torch` leaves it out) as `.safetensors` and `.pth` into
  `keras.applications.VGG16`'s weights (`--target vgg16.keras`), verified, against `cp` + `sync` of
  the `.safetensors` file;
- the Keras route (bench/keras_route.py) for each model: build it and its twin in Keras 3,
  `load_weights`, `get_weights`/`set_weights`, `save_weights`;
- `weightport --version`: the start-up cost of every command;
- a synthetic ~G GB legacy weights-only file (`--big-gb`, 0 skips it) whose Dense kernel dwarfs
  the rest: peak RSS must not grow with the file.

Why this way: machines here are noisy, so every ratio is taken against a floor and the Keras
route measured in the same run, the commands alternate round by round (the order rotating each
round), and the table gives median, min and max. Every command first runs once untimed, so all
timed runs read a warm page cache and cached Python bytecode; outputs go to `<cache>/out` on the
same disk as the sources and are deleted, then `sync` is called, between runs (untimed), so no run
pays for another's writeback. Peak RSS is the child's own maximum resident set:
`/usr/bin/time -f %M` when present, else `os.wait4`.
The source files are made once (bench/make_sources.py) and cached in `bench/cache/`.

    python bench/bench.py [--repeat N] [--keras-repeat K] [--big-gb G] [--cache DIR] [--skip-keras] [--skip-torch] [--compression] [--markdown] [--drop-caches]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from make_sources import APPS, WINDOW, app_names, big_channels, big_name

HERE = Path(__file__).resolve().parent
GNU_TIME = Path("/usr/bin/time")
MIB = 1 << 20

# the targets (issue 13): (time / floor at most, Keras route / time at least) for each kind of row
TARGETS = {"apps": (1.5, 10.0), "vgg16": (1.2, 20.0)}
MAX_RSS_MIB = 64.0
MAX_STARTUP_S = 0.1
TORCH_SOURCES = ["vgg16.safetensors", "vgg16.pth"]


@dataclass
class Command:
    """One benchmarked command and its timed runs."""

    label: str
    argv: list[str]
    output: Path | None = None  # deleted after every run
    floor: str | None = None  # a conversion: the label of the floor row it is compared with
    keras: str | None = None  # a conversion: the label of the Keras route for its model
    kind: str | None = None  # a conversion: "apps" or "vgg16", which targets apply
    seconds: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    output_bytes: int = 0  # the size of what it wrote, last run

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def peak_mib(self) -> float:
        return max(self.rss_kib) / 1024


# --- source files -------------------------------------------------------------------------

def child_env(cache: Path) -> dict[str, str]:
    """The children's environment: TensorFlow quiet, Python bytecode cached under `<cache>/pycache`
    (as an installed package has it, even where PYTHONDONTWRITEBYTECODE is set; the package's own
    folders get no __pycache__)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPYCACHEPREFIX": str(cache / "pycache")}


def make_cached(cache: Path, names: list[str], kind: str, *extra: str) -> None:
    """Run `make_sources.py KIND TMPDIR EXTRA...` unless all `names` are cached; move them in when whole."""
    if all((cache / name).exists() for name in names):
        return
    print(f"making {', '.join(names)} (cached in {cache}) ...", flush=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".make-") as tmp:
        argv = [sys.executable, str(HERE / "make_sources.py"), kind, tmp, *extra]
        subprocess.run(argv, env=child_env(cache), check=True, stdout=subprocess.DEVNULL)
        for name in names:
            os.replace(Path(tmp) / name, cache / name)


def make_sources(cache: Path, big_gb: float, torch: bool) -> Path | None:
    """The VGG16 files (Keras 3, tf_keras and, with `torch`, PyTorch's), the applications' and, unless
    `big_gb` is 0, the big file; returns its path."""
    make_cached(cache, ["vgg16.weights.h5", "vgg16.keras"], "keras3")
    make_cached(cache, ["vgg16_weights.h5"], "tf_keras")
    if torch:
        make_cached(cache, TORCH_SOURCES, "torch")
    make_cached(cache, [name for app in APPS for name in app_names(app)], "apps")
    if not big_gb:
        return None
    make_cached(cache, [big_name(big_gb)], "big", str(big_gb))
    return cache / big_name(big_gb)


# --- the commands -------------------------------------------------------------------------

def weightport_exe() -> str:
    """The console script beside this Python (not a pyenv shim, whose start-up is not weightport's)."""
    beside = Path(sys.executable).with_name("weightport")
    return str(beside) if beside.exists() else shutil.which("weightport") or "weightport"


def cp_rows(source: Path, out: Path, name: str) -> list[Command]:
    """`cp` (the bytes on this disk) and `cp` + `sync` of the copy (durable, as weightport's output is)."""
    dst = out / f"cp_{source.name}"
    sync = ["sh", "-c", 'cp -- "$1" "$2" && sync -- "$2"', "sh", str(source), str(dst)]
    return [Command(f"cp {name}", ["cp", str(source), str(dst)], dst), Command(f"cp + sync {name}", sync, dst)]


def floor_row(source: Path, out: Path) -> Command:
    """Start Python and import h5py and numpy, then `cp` + `sync`: what any Python tool pays that
    writes a durable copy of the source."""
    dst = out / f"floor_{source.name}"
    script = '"$0" -c "import h5py, numpy" && cp -- "$1" "$2" && sync -- "$2"'
    return Command(f"floor {source.name} (python + import h5py, numpy; cp + sync)", ["sh", "-c", script, sys.executable, str(source), str(dst)], dst)


def convert_row(label: str, source: Path, out: Path, extra: list[str], verify: bool, floor: str, keras: str | None, kind: str) -> Command:
    argv = [weightport_exe(), "convert", str(source), *extra, "-o", str(out), "--force", "--quiet"]
    return Command(label, argv + ([] if verify else ["--no-verify"]), out, floor, keras, kind)


def keras_row(cache: Path, out: Path, model: str, source: Path) -> Command:
    route = [sys.executable, str(HERE / "keras_route.py"), model, str(source), str(out / f"keras_{model}.weights.h5")]
    return Command(f"Keras route {model} (Keras 3, from {source.name})", route, out / f"keras_{model}.weights.h5")


def app_rows(cache: Path, out: Path, skip_keras: bool) -> list[Command]:
    """Per model: its two sources converted (the .keras one also with --score-map), their floors, its Keras route."""
    rows: list[Command] = []
    for app in APPS:
        keras3, legacy = (cache / name for name in app_names(app))
        route = None if skip_keras else keras_row(cache, out, app, keras3)
        for source, suffix in ((keras3, ".weights.h5"), (legacy, ".h5")):
            floor = floor_row(source, out)
            for extra in ([], ["--score-map"]) if source == keras3 else ([],):
                label = f"convert {source.name} -> {suffix}{' --score-map' if extra else ''}"
                rows.append(convert_row(label, source, out / f"fcn_{source.stem}{suffix}", extra, True, floor.label,
                                        route.label if route else None, "apps"))
            rows.append(floor)
        rows += [route] if route else []
    return rows


def vgg_rows(cache: Path, out: Path, skip_keras: bool, compression: bool) -> list[Command]:
    legacy, keras_file = cache / "vgg16_weights.h5", cache / "vgg16.keras"
    floor = "cp + sync vgg16_weights.h5"
    route = None if skip_keras else keras_row(cache, out, "VGG16", cache / "vgg16.weights.h5")
    keras = route.label if route else None
    flat = ["--flatten", "7,7,512"]
    rows = [Command("weightport --version", [weightport_exe(), "--version"])]
    for verify in (True, False):
        mode = "verify" if verify else "no-verify"
        rows += [convert_row(f"convert vgg16_weights.h5 -> .h5 ({mode})", legacy, out / "fcn.h5", flat, verify, floor, keras, "vgg16"),
                 convert_row(f"convert vgg16_weights.h5 -> .weights.h5 ({mode})", legacy, out / "fcn.weights.h5", flat, verify, floor, keras, "vgg16")]
    rows.append(convert_row("convert vgg16.keras -> .weights.h5 (verify)", keras_file, out / "fcn_k.weights.h5", [], True, floor, keras, "vgg16"))
    if compression:
        for method in ("lzf", "gzip"):
            rows.append(convert_row(f"convert vgg16_weights.h5 -> .h5 (verify, --compression {method})", legacy, out / f"fcn_{method}.h5",
                                    flat + ["--compression", method], True, floor, None, "compressed"))
    rows += cp_rows(legacy, out, "vgg16_weights.h5")
    return rows + ([route] if route else [])


def torch_rows(cache: Path, out: Path) -> list[Command]:
    """torchvision's VGG16 into Keras's: the .pth in its registration order, the .safetensors (whose
    order is the natural order of module paths: classifier before features) with its head mapped."""
    target = ["--target", str(cache / "vgg16.keras")]
    maps = ["--map", "classifier.0=fc1", "--map", "classifier.3=fc2", "--map", "classifier.6=predictions"]
    floor = "cp + sync vgg16.safetensors"
    return [convert_row("convert vgg16.safetensors -> .h5 (verify)", cache / "vgg16.safetensors", out / "from_safetensors.h5", target + maps,
                        True, floor, None, "torch"),
            convert_row("convert vgg16.pth -> .h5 (verify)", cache / "vgg16.pth", out / "from_pth.h5", target, True, floor, None, "torch"),
            *cp_rows(cache / "vgg16.safetensors", out, "vgg16.safetensors")]


def big_rows(big: Path, out: Path, big_gb: float) -> list[Command]:
    window = f"{WINDOW},{WINDOW},{big_channels(big_gb)}"
    floor = f"cp + sync {big.name}"
    return [convert_row(f"convert {big.name} -> .h5 (no-verify)", big, out / "big_fcn.h5", ["--flatten", window], False, floor, None, "big"),
            *cp_rows(big, out, big.name)]


# --- measuring ----------------------------------------------------------------------------

def run_once(command: Command, env: dict[str, str]) -> tuple[float, int]:
    """Run the command as a child; (wall seconds, peak RSS in KiB). Deletes its output, syncs."""
    with tempfile.TemporaryFile() as stderr, tempfile.NamedTemporaryFile("r") as report:
        timed = [str(GNU_TIME), "-f", "%M", "-o", report.name, *command.argv] if GNU_TIME.exists() else command.argv
        start = time.perf_counter()
        child = subprocess.Popen(timed, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = code = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if code:
            stderr.seek(0)
            raise SystemExit(f"{command.label} failed ({code}):\n{stderr.read().decode(errors='replace')[-2000:]}")
        rss = int(report.read().split()[-1]) if GNU_TIME.exists() else usage.ru_maxrss
    if command.output is not None:
        command.output_bytes = command.output.stat().st_size if command.output.exists() else 0
        command.output.unlink(missing_ok=True)
    os.sync()
    return seconds, rss


def drop_caches() -> None:
    """Write back and drop the clean page cache, so the runs find free memory (the warm-up run
    of each command then reads its source back in)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as exc:
        raise SystemExit(f"--drop-caches: cannot drop the page cache ({exc}); run as root on Linux, or leave it out") from None


def measure(commands: list[Command], repeat: int, env: dict[str, str], keras_repeat: int) -> None:
    """One untimed warm-up of each command, then `repeat` rounds, the order rotating each round.
    The Keras routes (5-10 s each here, minutes on a loaded machine) take part in the first
    `keras_repeat` rounds only, without a warm-up run."""
    for command in commands:
        if not command.label.startswith("Keras route"):
            run_once(command, env)
    for round_ in range(repeat):
        shift = round_ % len(commands)
        for command in commands[shift:] + commands[:shift]:
            if command.label.startswith("Keras route") and round_ >= keras_repeat:
                continue
            seconds, rss = run_once(command, env)
            command.seconds.append(seconds)
            command.rss_kib.append(rss)
        print(f"round {round_ + 1}/{repeat} done", file=sys.stderr, flush=True)


# --- reporting ----------------------------------------------------------------------------

HEADER = ["command", "median s", "min s", "max s", "time / floor", "Keras / time", "peak RSS MiB", "output MB"]


def table_rows(commands: list[Command]) -> list[list[str]]:
    by_label = {c.label: c for c in commands}
    rows = []
    for c in commands:
        vs_floor = f"{c.median / by_label[c.floor].median:.2f}x" if c.floor else ""
        vs_keras = f"{by_label[c.keras].median / c.median:.1f}x" if c.keras else ""
        size = f"{c.output_bytes / 1e6:.1f}" if c.output_bytes else ""
        rows.append([c.label, f"{c.median:.3f}", f"{min(c.seconds):.3f}", f"{max(c.seconds):.3f}", vs_floor, vs_keras, f"{c.peak_mib:.1f}", size])
    return rows


def render(rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = [HEADER, ["---"] + ["---:"] * (len(HEADER) - 1), *rows]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(HEADER), *(line(r) for r in rows)])


def verdict(ok: bool, text: str) -> str:
    return f"  [{'met' if ok else 'MISSED'}] {text}"


def target_lines(commands: list[Command]) -> list[str]:
    """Which numbers meet the targets (informational; nothing is asserted)."""
    by_label = {c.label: c for c in commands}
    lines = []
    for c in (c for c in commands if c.label.startswith("convert")):
        if c.kind in TARGETS:
            most, least = TARGETS[c.kind]
            ratio = c.median / by_label[c.floor].median
            lines.append(verdict(ratio <= most, f"{c.label}: {ratio:.2f}x its floor (target <= {most}x)"))
            if c.keras:
                speedup = by_label[c.keras].median / c.median
                lines.append(verdict(speedup >= least, f"{c.label}: {speedup:.1f}x faster than the Keras route (target >= {least:g}x)"))
        lines.append(verdict(c.peak_mib <= MAX_RSS_MIB, f"{c.label}: peak RSS {c.peak_mib:.1f} MiB (target <= {MAX_RSS_MIB:g} MiB)"))
    startup = by_label["weightport --version"].median
    lines.append(verdict(startup <= MAX_STARTUP_S, f"weightport --version: {startup:.3f} s median (target <= {MAX_STARTUP_S} s)"))
    return lines


def describe(sources: dict[str, Path], repeat: int) -> list[str]:
    rss_by = f"{GNU_TIME} -f %M" if GNU_TIME.exists() else "os.wait4 ru_maxrss"
    lines = [f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
             f"weightport: {weightport_exe()}; peak RSS via {rss_by}; {repeat} timed runs per command",
             "source files:"]
    lines += [f"  {path.name:28} {path.stat().st_size:>14,} bytes ({path.stat().st_size / MIB:,.1f} MiB)" for path in sources.values()]
    lines += ["page cache: warm for every command (one untimed warm-up run each); outputs on the same disk,",
              "deleted and `sync`ed between runs; weightport fsyncs its output, cp does not (see cp + sync);",
              "Python bytecode cached for the children (PYTHONPYCACHEPREFIX under the cache folder)."]
    return lines


# --- main ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each command (default 5)")
    parser.add_argument("--big-gb", type=float, default=0.0, help="size of the synthetic big source in GB (default 0: skip it)")
    parser.add_argument("--cache", type=Path, default=HERE / "cache", help="where the source files are made and kept")
    parser.add_argument("--skip-keras", action="store_true", help="leave out the Keras routes")
    parser.add_argument("--skip-torch", action="store_true", help="leave out the PyTorch sources (they need torch and torchvision)")
    parser.add_argument("--keras-repeat", type=int, help="timed runs of each Keras route (default: --repeat; no warm-up run)")
    parser.add_argument("--compression", action="store_true", help="add the VGG16 --compression lzf / gzip rows (slow: the compressors)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--drop-caches", action="store_true",
                        help="first empty the page cache (root, Linux): with it full, every new page of an output "
                             "waits for reclaim and even `cp` times swing several-fold")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.big_gb < 0 or not 0 < (args.keras_repeat or args.repeat) <= args.repeat:
        parser.error("--repeat must be >= 1, --keras-repeat between 1 and --repeat, --big-gb >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cache = args.cache.resolve()
    out = cache / "out"
    out.mkdir(parents=True, exist_ok=True)
    big = make_sources(cache, args.big_gb, not args.skip_torch)
    if args.drop_caches:
        drop_caches()
    commands = vgg_rows(cache, out, args.skip_keras, args.compression) + app_rows(cache, out, args.skip_keras)
    commands += big_rows(big, out, args.big_gb) if big else []
    commands += [] if args.skip_torch else torch_rows(cache, out)
    sources = {name: cache / name for name in ("vgg16_weights.h5", "vgg16.weights.h5", "vgg16.keras", *([] if args.skip_torch else TORCH_SOURCES))}
    sources.update({name: cache / name for app in APPS for name in app_names(app)})
    if big:
        sources[big.name] = big
    measure(commands, args.repeat, child_env(cache), args.keras_repeat or args.repeat)
    print("\n".join(describe(sources, args.repeat)))
    print()
    print(render(table_rows(commands), args.markdown))
    print("\ntargets (informational, nothing asserted):")
    print("\n".join(target_lines(commands)))


if __name__ == "__main__":
    main()
