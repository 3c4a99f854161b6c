"""Staff accounts and their roles. Support agents read the impression log and ask "why not";
prompt engineers use the Prompt lab; catalog staff add and remove items while the shop runs
(/api/catalog, `whyrec catalog`). Passwords are kept only as hashes (whyrec.service.passwords).

Accounts come from a file named by WHYREC_STAFF_ACCOUNTS, one account a line:

    alice:support:pbkdf2_sha256$200000$<salt hex>$<hash hex>
    bob:prompt_engineer:pbkdf2_sha256$...
    carol:support,prompt_engineer:pbkdf2_sha256$...

(blank lines and lines starting with # are skipped; `whyrec hash-password` makes the hash). The
single account of WHYREC_STAFF_USER / WHYREC_STAFF_PASSWORD_HASH, when set, is an admin with every
role, so a setup from before roles keeps working."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from whyrec.core.config import Settings
from whyrec.core.errors import ConfigError
from whyrec.service.passwords import ALGORITHM, verify_password


class Role(str, Enum):
    SUPPORT = "support"
    PROMPT_ENGINEER = "prompt_engineer"
    CATALOG = "catalog"


@dataclass(frozen=True)
class StaffAccount:
    name: str
    roles: frozenset[Role]
    password_hash: str


def parse_accounts(text: str, source: str) -> dict[str, StaffAccount]:
    """`user:role[,role]:hash` lines; a malformed line raises ConfigError naming the file and line."""
    accounts: dict[str, StaffAccount] = {}
    allowed = ", ".join(r.value for r in Role)
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        where = f"{source} line {number}"
        if len(parts) != 3 or not parts[0]:
            raise ConfigError(f"{where}: expected 'user:role[,role]:password-hash' (three fields separated by ':')")
        name, roles_text, password_hash = parts
        try:
            roles = frozenset(Role(r.strip()) for r in roles_text.split(",") if r.strip())
        except ValueError:
            raise ConfigError(f"{where}: unknown role in '{roles_text}' (roles: {allowed})") from None
        if not roles:
            raise ConfigError(f"{where}: account '{name}' has no role (roles: {allowed})")
        if not password_hash.startswith(ALGORITHM + "$") or password_hash.count("$") != 3:
            raise ConfigError(f"{where}: the password of '{name}' must be a hash from `whyrec hash-password` ({ALGORITHM}$...), never the password itself")
        if name in accounts:
            raise ConfigError(f"{where}: account '{name}' is listed twice")
        accounts[name] = StaffAccount(name, roles, password_hash)
    return accounts


def load_accounts(settings: Settings) -> dict[str, StaffAccount]:
    """Every staff account the server accepts: the accounts file's, plus the single admin account."""
    accounts: dict[str, StaffAccount] = {}
    if settings.staff_accounts is not None:
        path = Path(settings.staff_accounts)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the staff accounts file {path} (WHYREC_STAFF_ACCOUNTS): {exc.strerror}") from None
        accounts = parse_accounts(text, str(path))
    if settings.staff_password_hash is not None and settings.staff_user not in accounts:
        accounts[settings.staff_user] = StaffAccount(settings.staff_user, frozenset(Role), settings.staff_password_hash)
    return accounts


def authenticate(accounts: dict[str, StaffAccount], user: str, password: str) -> StaffAccount | None:
    """The account whose password this is; None for an unknown user or a wrong password."""
    account = accounts.get(user)
    if account is None or not verify_password(password, account.password_hash):
        return None
    return account
