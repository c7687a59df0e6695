"""Wheels for the GPU day: what tilesam needs that a lent GPU machine lacks, for its Python, into `.whl/`.

The lent machines (see `benchmarks/gpu_day.sh`) have PyTorch, CUDA and much of the scientific stack
but no package index. Run this here, where pip reaches one, in the development venv (its versions are
the ones the tests passed with):

    python benchmarks/gpu_wheels.py            # then: the device tool runs `bash benchmarks/gpu_day.sh`, carrying .whl

It follows tilesam's runtime requirements (no extras) through the installed distributions, drops
those the machine has (`DEVICE`, its image's package list as the device tool's notes gave it on
2026-11-17) and those no GPU-day command imports (`UNUSED`), and downloads the rest, pinned, as
wheels for CPython 3.12 on manylinux x86-64 (`--no-deps`: the list is complete); a package published
only as a source archive is built into a wheel here (pure Python). tilesam itself is installed there
from the checkout. The working tree that travels, wheels included, must stay under 64 MiB.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
ENVIRONMENT = {  # the lent machine's, for requirement markers
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
DEVICE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson
six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision
tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug
wheel wrapt xarray xxhash yarl zipp""".split()
UNUSED = {  # requirements of requirements that no GPU-day command imports
    **dict.fromkeys(["aiobotocore", "aioitertools", "botocore", "jmespath", "s3fs"], "ome-zarr's S3 access"),
    **dict.fromkeys(["ome-zarr", "ome-zarr-models", "pydantic", "pydantic-core", "pydantic-zarr"], "tests only"),
    **dict.fromkeys(["annotated-types", "typing-inspection", "sqlalchemy", "sqlmodel", "greenlet"], "tests only"),
    **dict.fromkeys(["httpx2", "httpcore2", "rangehttpserver"], "not imported by tilesam's jobs"),
    "pulp": "Snakemake's ILP scheduler (16 MB); gpu_check runs `--scheduler greedy`",
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str = "tilesam") -> dict[str, str]:
    """name -> installed version of `root` and everything it requires (markers for the lent machine)."""
    found: dict[str, tuple[str, frozenset]] = {}
    todo = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        dist = metadata.distribution(name)
        key = norm(dist.metadata["Name"])
        if key in found and extras <= found[key][1]:
            continue
        found[key] = (dist.version, extras | found.get(key, ("", frozenset()))[1])
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({**ENVIRONMENT, "extra": e}) for e in (extras or {""})):
                continue
            todo.append((req.name, frozenset(req.extras)))
    return {name: version for name, (version, _) in found.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / ".whl")
    parser.add_argument("--limit-mb", type=float, default=56.0, help="the wheels' size bound (64 MiB in all travel)")
    args = parser.parse_args()
    device = {norm(n) for n in DEVICE}
    wanted = {n: v for n, v in closure().items() if n not in device and n not in UNUSED and n != "tilesam"}
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip"]
    for name, version in sorted(wanted.items()):
        spec = f"{name}=={version}"
        binary = [*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                  "--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS), "-d", str(args.out), spec]  # fmt: skip
        if subprocess.run(binary, capture_output=True).returncode == 0:
            continue
        built = subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(args.out), spec], capture_output=True)
        if built.returncode != 0:
            print(
                f"{spec}: no wheel for CPython 3.12 and none could be built:\n{built.stderr.decode()}", file=sys.stderr
            )
            return 1
        print(f"{spec}: built from its source archive")
    wheels = sorted(args.out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {size:.1f} MiB in {args.out} (skipped: {', '.join(sorted(UNUSED))})")
    if size > args.limit_mb:
        print(f"over --limit-mb {args.limit_mb}: the working tree would not travel", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
