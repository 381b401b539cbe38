"""An arm64 Python with ONNX Runtime under QEMU user-mode emulation, to run a bundle's own script as a phone or a
board would, on this x86-64 machine.

What it is made of, all from package registries: `qemu-aarch64-static` (or `qemu-aarch64`) from the host's
packages; an arm64 root holding Debian 12's Python 3.11 and the C/C++ libraries it and ONNX Runtime load (the
arm64 `.deb`s named by Debian's package index, checked against the index's SHA-256 and unpacked without dpkg);
and the aarch64 wheels of onnxruntime, numpy and tokenizers (the versions installed here), jinja2 and the
modules onnxruntime imports, unpacked into one directory. Built once into a user cache directory
(`$XDG_CACHE_HOME/edge-compress/emulation/`, about 250 MB), reused while its recipe is unchanged. Nothing needs
root or binfmt_misc: QEMU is started with `-L ROOT`, which makes the guest's absolute paths resolve inside ROOT
first, and the bundle scripts start no child process.

What is written here by hand, and why: no library builds a foreign-architecture root without root privileges
and dpkg (debootstrap and mmdebstrap need them), so the index is read and the archives unpacked here (`.deb` is an
`ar` archive holding `data.tar.xz`).

Pitfalls met on the way, each handled below: QEMU before 8.2 shows the guest the host's x86 `/proc/cpuinfo`, and
ONNX Runtime's CPU detection then crashes or picks instructions the emulated CPU lacks, so each CPU model gets
a root of its own whose `proc/cpuinfo` describes it (`-L` resolves the guest's `/proc/cpuinfo` there); and
QEMU 7.2's `-cpu max` (with SME) computes ONNX Runtime's int8 GEMM wrongly without any error, so every CPU model
is first put through a known-answer test (`known_answer_check`) and refused when it fails.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# What the guest runs: Python 3.11 and its standard library, and the C++ runtime ONNX Runtime links against.
ROOT_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6", "libgcc-s1")
# Dependencies the guest never uses (package tools, the time-zone database): left out of the root.
SKIP_PACKAGES = {"debconf", "perl-base", "dpkg", "tzdata", "readline-common", "install-info", "debianutils"}
# Wheels pinned to the versions installed here (so the guest computes with the same ONNX Runtime, and builds
# again the same), and the modules they import (at this machine's versions where installed, else the newest).
PINNED_WHEELS = ("onnxruntime", "numpy", "tokenizers")
OTHER_WHEELS = ("jinja2", "markupsafe", "flatbuffers", "packaging", "protobuf")
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64",
                   "manylinux2014_aarch64")  # fmt: skip

# CPU models QEMU emulates that stand for devices bundles ship to, and the /proc/cpuinfo each shows on a device.
CPUS = {
    "cortex-a53": ("small boards: Raspberry Pi 3 and Zero 2, phones' little cores", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a72": ("Raspberry Pi 4", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a76": (
        "Raspberry Pi 5, phones' big cores",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
    ),
    "neoverse-n1": (
        "Arm servers (AWS Graviton 2, Ampere Altra)",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs",
    ),
    "max": (
        "every feature QEMU emulates (SVE2, SME, i8mm, bf16): the newest phones' instruction paths",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop "
        "sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp sve2 sveaes "
        "svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svebf16 i8mm bf16 dgh bti sme",
    ),
}
DEFAULT_CPUS = ("cortex-a53", "cortex-a72", "cortex-a76", "neoverse-n1")


class EmulationError(RuntimeError):
    """The emulator or its arm64 environment is missing, cannot be built, or computes wrongly; the message is one
    line naming what and how to fix it."""


@dataclass(frozen=True)
class Guest:
    """A ready arm64 environment: the QEMU binary and its version, the shared root, the wheels' directory."""

    qemu: Path
    qemu_version: str
    root: Path
    site: Path
    record: dict

    def cpu_root(self, cpu: str) -> Path:
        """A root for `cpu`: the shared one's directories linked in, and a /proc/cpuinfo describing that CPU."""
        if cpu not in CPUS:
            raise EmulationError(f"--cpu {cpu}: not a CPU model this tool describes; choose from {', '.join(CPUS)}")
        d = self.root.parent / f"cpu-{cpu}"
        if not (d / "proc" / "cpuinfo").is_file():
            (d / "proc").mkdir(parents=True, exist_ok=True)
            for entry in self.root.iterdir():
                link = d / entry.name
                if not link.exists() and entry.name != "proc":
                    link.symlink_to(entry)
            features = CPUS[cpu][1]
            (d / "proc" / "cpuinfo").write_text(
                "".join(
                    f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
                    "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n"
                    for i in range(2)
                )
            )
        return d

    def command(self, cpu: str, script: Path, *args: str) -> list[str]:
        """The host command that runs `script` with the guest's Python on emulated `cpu`."""
        root = self.cpu_root(cpu)
        return [str(self.qemu), "-cpu", cpu, "-L", str(root), str(root / "usr/bin/python3.11"), str(script), *args]

    def run(self, cpu: str, script: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
        env = {"PYTHONPATH": str(self.site), "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C.UTF-8", "HOME": "/tmp",
               "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}  # fmt: skip
        return subprocess.run(
            self.command(cpu, script, *args), capture_output=True, text=True, timeout=timeout, env=env
        )


def find_qemu() -> tuple[Path, str]:
    """The aarch64 user-mode emulator on PATH and its version.

    Raises:
        EmulationError: none found (with the command that installs it).
    """
    for name in ("qemu-aarch64-static", "qemu-aarch64"):
        found = shutil.which(name)
        if found:
            out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30).stdout
            m = re.search(r"version ([0-9.]+)", out)
            return Path(found), m.group(1) if m else "unknown"
    raise EmulationError(
        "no arm64 emulator: install QEMU's user-mode emulator (Debian/Ubuntu: sudo apt-get install "
        "qemu-user-static; Fedora: sudo dnf install qemu-user-static), then run again"
    )


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edge-compress" / "emulation"


def _pins() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = {}
    for name in (*PINNED_WHEELS, *OTHER_WHEELS):
        try:
            pins[name] = version(name)
        except PackageNotFoundError:
            if name in PINNED_WHEELS:
                raise EmulationError(f"{name} is not installed here: pip install {name}") from None
            pins[name] = ""
    return pins


def ensure_guest(progress: Callable[[str], None] = print, root_dir: Path | None = None) -> Guest:
    """The arm64 environment, built into the cache the first time (or when its recipe changed).

    Raises:
        EmulationError: no emulator, or a download or check that failed (one line: what, and what to do).
    """
    qemu, qemu_version = find_qemu()
    recipe = {"mirror": MIRROR, "suite": SUITE, "packages": list(ROOT_PACKAGES), "wheels": _pins(),
              "python": "cp311"}  # fmt: skip
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    home = Path(root_dir or cache_dir()) / f"arm64-{key}"
    done = home / "environment.json"
    if done.is_file():
        record = json.loads(done.read_text())
        return Guest(qemu, qemu_version, home / "root", home / "site", {**record, "qemu": qemu_version})
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="building-", dir=_mkdir(home.parent)))
    try:
        progress(f"arm64 environment: building into {home} (once; about 250 MB)")
        packages = _build_root(tmp / "root", progress)
        wheels = _unpack_wheels(tmp / "site", recipe["wheels"], progress)
        record = {"recipe": recipe, "packages": packages, "wheels": wheels,
                  "built_s": round(time.perf_counter() - t0, 1), "bytes": _size(tmp)}  # fmt: skip
        (tmp / "environment.json").write_text(json.dumps(record, indent=1))
        if home.exists():
            shutil.rmtree(home)
        tmp.rename(home)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    progress(f"arm64 environment: ready in {record['built_s']:.0f}s, {record['bytes'] / 1e6:.0f} MB")
    return Guest(qemu, qemu_version, home / "root", home / "site", {**record, "qemu": qemu_version})


def _mkdir(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d


def _size(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and not f.is_symlink())


def _fetch(url: str, what: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.read()
    except OSError as e:
        raise EmulationError(f"cannot download {what} from {url}: {e}; check the network or the mirror") from None


KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


def _release() -> tuple[str, str]:
    """The suite's Release file, and whether its signature was verified (with gpgv and Debian's keyring, where
    this machine has them; else the chain of SHA-256 sums starts from the file as downloaded over HTTP)."""
    raw = _fetch(f"{MIRROR}/dists/{SUITE}/Release", "Debian's release file")
    gpgv = shutil.which("gpgv")
    if not (gpgv and KEYRING.is_file()):
        return raw.decode(), "not checked (no gpgv or debian-archive-keyring here)"
    sig = _fetch(f"{MIRROR}/dists/{SUITE}/Release.gpg", "the release file's signature")
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "Release").write_bytes(raw)
        (Path(d) / "Release.gpg").write_bytes(sig)
        ok = subprocess.run([gpgv, "--keyring", str(KEYRING), f"{d}/Release.gpg", f"{d}/Release"],
                            capture_output=True, timeout=60).returncode == 0  # fmt: skip
    if not ok:
        raise EmulationError(f"{MIRROR}/dists/{SUITE}/Release: its signature does not verify with {KEYRING}")
    return raw.decode(), f"verified with gpgv and {KEYRING}"


def _index(arch: str) -> tuple[dict[str, dict], str]:
    """Debian's package index for `arch` (and `all`), its SHA-256 checked against the suite's Release file; and
    how the Release file was checked."""
    release, signature = _release()
    sums = dict(
        (path, digest)
        for digest, _, path in re.findall(r"^ ([0-9a-f]{64})\s+(\d+)\s+(\S+)$", release.split("SHA256:", 1)[1], re.M)
    )
    packages: dict[str, dict] = {}
    for part in (f"main/binary-{arch}/Packages.xz", "main/binary-all/Packages.xz"):
        raw = _fetch(f"{MIRROR}/dists/{SUITE}/{part}", "Debian's package index")
        if hashlib.sha256(raw).hexdigest() != sums.get(part):
            raise EmulationError(f"{part}: its SHA-256 is not the one Debian's Release file lists; try again later")
        for stanza in lzma.decompress(raw).decode().split("\n\n"):
            fields = dict(re.findall(r"^([\w-]+): (.*)$", stanza, re.M))
            if "Package" in fields:
                packages.setdefault(fields["Package"], fields)
    return packages, signature


def _closure(packages: dict[str, dict], wanted) -> list[str]:
    """The packages `wanted` needs (Depends and Pre-Depends, first alternative), minus SKIP_PACKAGES."""
    order, seen, todo = [], set(), list(wanted)
    while todo:
        name = todo.pop()
        if name in seen or name in SKIP_PACKAGES:
            continue
        seen.add(name)
        if name not in packages:
            raise EmulationError(f"Debian {SUITE} arm64 has no package {name!r}")
        order.append(name)
        deps = ", ".join(packages[name].get(k, "") for k in ("Pre-Depends", "Depends"))
        for dep in filter(None, (d.strip() for d in deps.split(","))):
            first = dep.split("|")[0].strip()
            todo.append(re.split(r"[\s:(]", first)[0])
    return sorted(order)


def _build_root(root: Path, progress) -> dict:
    packages, signature = _index("arm64")
    names = _closure(packages, ROOT_PACKAGES)
    root.mkdir(parents=True)
    versions = {}
    for i, name in enumerate(names, 1):
        p = packages[name]
        progress(f"  arm64 root {i}/{len(names)}: {name} {p['Version']}")
        deb = _fetch(f"{MIRROR}/{p['Filename']}", f"{name}.deb")
        if hashlib.sha256(deb).hexdigest() != p["SHA256"]:
            raise EmulationError(f"{p['Filename']}: its SHA-256 is not the index's; try again later")
        _unpack_deb(deb, root)
        versions[name] = p["Version"]
    if not (root / "usr/bin/python3.11").is_file():
        raise EmulationError("the arm64 root has no usr/bin/python3.11 after unpacking; the package index changed?")
    return {"release_signature": signature, "versions": versions}


def _unpack_deb(deb: bytes, root: Path) -> None:
    """The files of a .deb (an `ar` archive: debian-binary, control.tar.*, data.tar.*) into `root`, absolute
    symlinks made relative so that they resolve inside it."""
    if not deb.startswith(b"!<arch>\n"):
        raise EmulationError("a downloaded .deb is not an ar archive")
    pos = 8
    while pos + 60 <= len(deb):
        name = deb[pos : pos + 16].decode().strip().rstrip("/")
        size = int(deb[pos + 48 : pos + 58].decode().strip())
        body = deb[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                for m in tar.getmembers():
                    target = (root / m.name).resolve()
                    if root.resolve() not in target.parents and target != root.resolve():
                        continue  # nothing outside the root
                    if m.issym() and m.linkname.startswith("/"):
                        m.linkname = os.path.relpath(root / m.linkname.lstrip("/"), (root / m.name).parent)
                    if m.isdev():
                        continue
                    tar.extract(m, root, **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
            return
    raise EmulationError("a downloaded .deb holds no data archive")


def _unpack_wheels(site: Path, pins: dict[str, str], progress) -> dict[str, str]:
    """The aarch64 CPython 3.11 wheels, downloaded by pip from the package index and unzipped into `site`."""
    site.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as d:
        specs = [f"{k}=={v}" if v else k for k, v in pins.items()]
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", d,
               "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi",
               "none"]  # fmt: skip
        for plat in WHEEL_PLATFORMS:
            cmd += ["--platform", plat]
        progress(f"  aarch64 wheels: {', '.join(specs)}")
        out = subprocess.run([*cmd, *specs], capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise EmulationError(f"pip could not download the aarch64 wheels: {last}")
        got = {}
        for whl in sorted(Path(d).glob("*.whl")):
            with zipfile.ZipFile(whl) as z:
                z.extractall(site)
            got[whl.name] = hashlib.sha256(whl.read_bytes()).hexdigest()
    return got


__all__ = ["CPUS", "DEFAULT_CPUS", "EmulationError", "Guest", "ensure_guest", "find_qemu"]
