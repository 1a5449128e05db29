"""The chain's signed apt repository for tillplug, made with reprepro (Debian's package).

    python3 packaging/apt_repo.py keygen --gnupghome KEYS --uid "Chain tills <apt@chain.example>" \
        --public tillplug-archive-keyring.gpg
    python3 packaging/apt_repo.py publish --repo REPO --key FINGERPRINT [--gnupghome KEYS] \
        [--suite stable] [--phased 10] dist/tillplug_<version>_<arch>.deb
    python3 packaging/apt_repo.py phase --repo REPO --key FINGERPRINT --phased 50

``REPO`` is a folder to serve as it is (any web server; tills reach it over HTTP or HTTPS, apt
checks the signature, not the transport). The key is the chain's: ``keygen`` makes one with gpg
(an ed25519 signing key without a passphrase, for a build machine; the chain may use its own:
any key gpg can sign with), and ``--public`` is the file tills get as
``/usr/share/keyrings/tillplug-archive-keyring.gpg``. Keep ``KEYS`` off the tills.

``--phased N`` writes ``Phased-Update-Percentage: N`` into the package's stanza (reprepro's
override file): apt on a till installs the new version only if its machine's phase (from
``/etc/machine-id`` or ``APT::Machine-ID``, the package and the version) is under N. ``phase``
changes N for the version already published (1, 10, 50, then 100: the field goes). reprepro
keeps one version per suite: publishing a new one replaces the old in the index, and tills out of
its phase keep the version they have.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "tillplug"


def run(*argv: str | Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"{argv[0]} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout


def gpg_env(gnupghome: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if gnupghome is not None:
        env["GNUPGHOME"] = str(gnupghome)
    return env


def keygen(gnupghome: Path, uid: str, public: Path) -> str:
    """A new signing key in ``gnupghome``; its public half (binary keyring) in ``public``; its fingerprint."""
    gnupghome.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = gpg_env(gnupghome)
    run("gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key", uid, "ed25519",
        "sign", "never", env=env)  # fmt: skip
    fingerprint = fingerprint_of(gnupghome, uid)
    public.write_bytes(
        subprocess.run(["gpg", "--export", fingerprint], capture_output=True, env=env, check=True).stdout
    )
    return fingerprint


def fingerprint_of(gnupghome: Path | None, who: str) -> str:
    listing = run("gpg", "--batch", "--with-colons", "--list-secret-keys", who, env=gpg_env(gnupghome))
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


def configure(repo: Path, suite: str, key: str, phased: int, architectures: str) -> None:
    """reprepro's two files: the suite (signed with ``key``) and the override that carries the phase."""
    conf = repo / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "distributions").write_text(
        f"Origin: {PACKAGE}\nLabel: {PACKAGE}\nCodename: {suite}\nArchitectures: {architectures}\n"
        f"Components: main\nDescription: tillplug for the chain's tills\nSignWith: {key}\n"
        f"DebOverride: override.{suite}\n"
    )
    # 100 % is no phasing at all: the field goes, as apt reads a missing field as 100.
    (conf / f"override.{suite}").write_text(f"{PACKAGE} Phased-Update-Percentage {phased}\n" if phased < 100 else "")


def reprepro(repo: Path, gnupghome: Path | None, *args: str | Path) -> str:
    return run("reprepro", "--basedir", repo, "--silent", *args, env=gpg_env(gnupghome))


def publish(repo: Path, suite: str, key: str, gnupghome: Path | None, phased: int, debs: list[Path]) -> None:
    configure(repo, suite, key, phased, "amd64 arm64 armhf")
    for deb in debs:
        reprepro(repo, gnupghome, "includedeb", suite, deb)


def phase(repo: Path, suite: str, key: str, gnupghome: Path | None, phased: int) -> None:
    """A new percentage for the version already published (reprepro applies overrides when it includes)."""
    listed = reprepro(repo, gnupghome, "--list-format", "${$fullfilename}\\n", "listfilter", suite,
                      f"Package (== {PACKAGE})").split()  # fmt: skip
    if not listed:
        sys.exit(f"no {PACKAGE} in {suite} to phase")
    with tempfile.TemporaryDirectory() as keep:
        kept = [Path(shutil.copy2(deb, keep)) for deb in listed]
        reprepro(repo, gnupghome, "remove", suite, PACKAGE)
        publish(repo, suite, key, gnupghome, phased, kept)


def percent(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError("a percentage is 0 to 100")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keygen", help="make the chain's signing key with gpg")
    k.add_argument("--gnupghome", type=Path, required=True)
    k.add_argument("--uid", required=True, help='e.g. "Chain tills <apt@chain.example>"')
    k.add_argument("--public", type=Path, required=True, help="where to write the keyring tills trust")
    for name in ("publish", "phase"):
        s = sub.add_parser(name, help="add .deb files" if name == "publish" else "change the published phase")
        s.add_argument("--repo", type=Path, required=True)
        s.add_argument("--key", required=True, help="the signing key's fingerprint")
        s.add_argument("--gnupghome", type=Path)
        s.add_argument("--suite", default="stable")
        s.add_argument("--phased", type=percent, default=100, help="Phased-Update-Percentage (default 100: all)")
        if name == "publish":
            s.add_argument("debs", nargs="+", type=Path)
    args = p.parse_args(argv)
    if shutil.which("reprepro") is None and args.command != "keygen":
        sys.exit("reprepro is not installed: apt-get install reprepro")
    if args.command == "keygen":
        print(keygen(args.gnupghome, args.uid, args.public))
    elif args.command == "publish":
        publish(args.repo, args.suite, args.key, args.gnupghome, args.phased, args.debs)
    else:
        phase(args.repo, args.suite, args.key, args.gnupghome, args.phased)
    return 0


if __name__ == "__main__":
    sys.exit(main())
