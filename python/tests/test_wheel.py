"""The wheel a user installs with pip (issue 30): built from the binary under test, installed into a fresh
virtual environment whose PATH has no Swift toolchain and no other ckstore, and run from there."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

from conftest import ROOT

EXAMPLE = os.path.join(ROOT, "python", "examples", "plain_torch.py")


def _configuration(binary: str) -> str:
    return "release" if os.sep + "release" + os.sep in os.path.realpath(binary) else "debug"


def _allowed_libraries(tag: str) -> set:
    """The libraries the manylinux policy of ``tag`` lets a wheel link, from auditwheel's own policy file."""
    (policy_file,) = glob.glob(os.path.join(ROOT, ".build", "wheel-tools", "lib", "python3*", "site-packages",
                                            "auditwheel", "policy", "manylinux-policy.json"))
    name = re.match(r"(manylinux_\d+_\d+)_", tag).group(1)
    policies = {policy["name"]: policy for policy in json.load(open(policy_file))}
    return set(policies[name]["lib_whitelist"]) | {"linux-vdso.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}


def test_the_wheel_installs_and_runs_without_swift(tmp_path, ckstore_bin):
    configuration = _configuration(ckstore_bin)
    scripts = os.path.join(ROOT, "scripts")
    # The binary under test, linked self-contained (a no-op when `make test` already did), then packed.
    for script in ("static-ckstore.sh", "build-wheel.sh"):
        built = subprocess.run([os.path.join(scripts, script), configuration], capture_output=True, text=True,
                               env=dict(os.environ, WHEEL_DIR=str(tmp_path / "dist")))
        assert built.returncode == 0, f"{script}: {built.stderr[-3000:]}"
    wheel = built.stdout.strip().splitlines()[-1]
    name = os.path.basename(wheel)
    version = subprocess.run([ckstore_bin, "--version"], check=True, capture_output=True, text=True).stdout.strip()
    assert name.startswith(f"ckstore-{version}-py3-none-manylinux_"), name
    tag = name[len(f"ckstore-{version}-py3-none-"):-len(".whl")]

    fresh = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(fresh)], check=True)
    subprocess.run([str(fresh / "bin" / "pip"), "install", "-q", "--no-index", "--no-deps", wheel], check=True)
    # torch is 800 MB: the fresh environment sees the test environment's copy after its own packages, so
    # the ckstore it imports is the wheel's (checked below).
    import torch

    (site,) = glob.glob(str(fresh / "lib" / "python3*" / "site-packages"))
    with open(os.path.join(site, "torch-from-test-env.pth"), "w") as pth:
        pth.write(os.path.dirname(os.path.dirname(torch.__file__)) + "\n")

    env = {"PATH": f"{fresh / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    assert shutil.which("swift", path=env["PATH"]) is None, "the fresh environment's PATH reaches a Swift toolchain"
    on_path = [p for p in env["PATH"].split(os.pathsep) if os.path.exists(os.path.join(p, "ckstore"))]
    assert on_path == [str(fresh / "bin")], on_path

    def run(*arguments):
        done = subprocess.run(list(arguments), env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{arguments}: {done.stdout[-2000:]} {done.stderr[-3000:]}"
        return done

    assert run("ckstore", "--version").stdout.strip() == version
    info = json.loads(run("python", "-c", "import ckstore, json; print(json.dumps([ckstore.binary_info(), ckstore.__file__, ckstore.__version__]))").stdout)
    assert info[0]["source"] == "bundled" and info[0]["version"] == version
    assert info[1].startswith(site) and info[0]["path"].startswith(site)
    assert info[2] == version

    libraries = set()
    for line in run("ldd", info[0]["path"]).stdout.splitlines():
        libraries.add(os.path.basename(line.split()[0]))
    assert libraries <= _allowed_libraries(tag), f"{sorted(libraries - _allowed_libraries(tag))} are not allowed by {tag}"
    assert not any("swift" in lib or "Foundation" in lib or "zstd" in lib or "sqlite" in lib for lib in libraries), libraries

    store = str(tmp_path / "store")
    first = run("python", EXAMPLE, store, "20")
    assert "step 20" in first.stdout, first.stdout + first.stderr
    second = run("python", EXAMPLE, store, "20")
    assert "resumed at step 20" in second.stdout, second.stdout + second.stderr
    listed = json.loads(run("ckstore", "ls", "--store", store, "--json").stdout)
    assert [c["step"] for c in listed if c["run"] == "plain"] == [10, 20, 30, 40]
