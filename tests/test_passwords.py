import subprocess
import sys

from whyrec.service.passwords import hash_password, verify_password


def test_a_hashed_password_verifies_and_a_wrong_one_does_not():
    hashed = hash_password("correct horse", iterations=1_000)
    assert "correct horse" not in hashed
    assert verify_password("correct horse", hashed)
    assert not verify_password("correct horse ", hashed)


def test_no_login_succeeds_without_a_configured_or_wellformed_hash():
    assert not verify_password("anything", None)
    assert not verify_password("anything", "plain-text-password")
    assert not verify_password("anything", "pbkdf2_sha256$x$zz$00")


def test_hash_password_command_reads_stdin_and_prints_a_usable_hash():
    done = subprocess.run([sys.executable, "-m", "whyrec.cli", "hash-password"], input="s3cret\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert verify_password("s3cret", done.stdout.strip())
