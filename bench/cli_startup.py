"""Start-up cost of ``motionlab generate``: ``--help``, one tiny generation end to end, and what is not sampling.

    python bench/cli_startup.py                          # tiny-dmd, 3 repeats
    python bench/cli_startup.py --repeats 5 --floor      # also time importing only the libraries generation needs
    python bench/cli_startup.py --against "python /tmp/old_cli.py"   # and another CLI, alternately, same repeats
    python bench/cli_startup.py --breakdown              # only: what each library adds, imported one after another

Each repeat runs, as fresh processes: ``motionlab generate --help``, then one generation of a single video (``--out
<tmp>/v.mp4``). The sampling time is the ``seconds`` the command prints (text encoding, denoising and VAE decoding
in ``trainer.sampling.generate_batch``); overhead = end-to-end wall time - sampling. Child CPU time (user + sys) is
printed next to each wall time, since on a shared machine it is steadier than wall time. ``--floor`` adds a process
that imports only torch, the Wan classes of diffusers, UMT5 of transformers and PyAV, and exits: what any generation
pays for its libraries, whatever the CLI does. ``--against CMD`` times a second command line in place of
``motionlab`` (e.g. an older ``backend/cli.py`` run as a script) in the same repeats, alternating with this one.
``--breakdown`` instead runs one process that imports step by step torch, what transformers pulls in (torch._dynamo,
scipy.optimize), transformers, diffusers (with scipy.stats and peft) and PyAV, printing the wall and CPU time each
step adds.

Children run with ``OMP_NUM_THREADS=1`` unless it is set. Prints one line per run, then min and median.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOOR = (
    "import gc, torch\n"
    "from transformers import AutoTokenizer, UMT5EncoderModel\n"
    "from diffusers.models.transformers.transformer_wan import WanTransformer3DModel\n"
    "from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan\n"
    "import av\n"
    "gc.freeze()\n"
)  # as the CLI does at exit
BREAKDOWN = (  # (what, statement): each step pays only for what the earlier ones have not imported
    ("torch", "import torch"),
    ("torch._dynamo (transformers, diffusers)", "import torch._dynamo"),
    ("scipy.optimize (transformers' losses)", "import scipy.optimize"),
    ("transformers (package)", "import transformers"),
    ("transformers.modeling_utils", "import transformers.modeling_utils"),
    ("UMT5 + AutoTokenizer", "from transformers import AutoTokenizer, UMT5EncoderModel"),
    ("diffusers.utils (installed-package scan)", "import diffusers.utils"),
    ("scipy.stats (diffusers' single-file loader)", "import scipy.stats"),
    ("peft (diffusers.hooks)", "import peft"),
    ("diffusers.models.transformers (all)", "import diffusers.models.transformers.transformer_wan"),
    ("diffusers.models.autoencoders (all)", "import diffusers.models.autoencoders.autoencoder_kl_wan"),
    ("av", "import av"),
)
BREAKDOWN_CHILD = """
import time
for what, stmt in {steps!r}:
    t0, c0 = time.perf_counter(), time.process_time()
    exec(stmt)
    print(f"{{what:45s}} {{time.perf_counter() - t0:6.2f}} {{time.process_time() - c0:6.2f}}", flush=True)
"""


def motionlab_cmd() -> list[str]:
    """The console script next to this interpreter, else the module."""
    script = Path(sys.executable).with_name("motionlab")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "backend.cli"]


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Run ``cmd`` -> (wall seconds, child CPU seconds, stdout); a failure stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="tiny-dmd")
    ap.add_argument("--prompt", default="a red square moves left")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--floor", action="store_true", help="also time a process importing only the libraries")
    ap.add_argument("--against", default=None, help="another command line standing for `motionlab`, timed too")
    ap.add_argument("--breakdown", action="store_true", help="only: the libraries' import cost, step by step")
    args = ap.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if args.breakdown:
        print(f"{'import step':45s} {'wall':>6s} {'cpu':>6s}", flush=True)
        subprocess.run([sys.executable, "-c", BREAKDOWN_CHILD.format(steps=BREAKDOWN)], cwd=ROOT, env=env, check=True)
        return
    clis = {"this": motionlab_cmd()}
    if args.against:
        clis["against"] = shlex.split(args.against)
    rows: dict[tuple[str, str], list[float]] = {}

    def add(label: str, name: str, value: float) -> float:
        rows.setdefault((label, name), []).append(value)
        return value

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for label, cli in clis.items():
                h_wall, h_cpu, _ = timed([*cli, "generate", "--help"], env)
                out = Path(tmp) / f"{label}{i}.mp4"
                wall, cpu, stdout = timed(
                    [*cli, "generate", "--checkpoint", args.checkpoint, "--prompt", args.prompt, "--out", str(out)], env
                )
                sampling = json.loads(stdout.strip().splitlines()[-1])["seconds"]
                add(label, "help wall", h_wall)
                add(label, "help cpu", h_cpu)
                add(label, "generate wall", wall)
                add(label, "generate cpu", cpu)
                add(label, "sampling", sampling)
                add(label, "overhead wall", wall - sampling)
                print(
                    f"run {i} {label}: help {h_wall:.2f} s (cpu {h_cpu:.2f}); generate {wall:.2f} s (cpu {cpu:.2f}),"
                    f" sampling {sampling:.2f} s, overhead {wall - sampling:.2f} s",
                    flush=True,
                )
            if args.floor:
                f_wall, f_cpu, _ = timed([sys.executable, "-c", FLOOR], env)
                add("floor", "library imports wall", f_wall)
                add("floor", "library imports cpu", f_cpu)
                print(f"run {i}: library imports alone {f_wall:.2f} s (cpu {f_cpu:.2f})", flush=True)

    print(f"\n{args.repeats} repeats, generate --checkpoint {args.checkpoint}; seconds")
    for label, cli in clis.items():
        print(f"  {label}: {' '.join(cli)}")
    print(f"{'':8s} {'':22s} {'min':>7s} {'median':>7s}")
    for (label, name), values in rows.items():
        print(f"{label:8s} {name:22s} {min(values):7.2f} {statistics.median(values):7.2f}")


if __name__ == "__main__":
    main()
