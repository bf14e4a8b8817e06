"""The `enigmo` command line: argument parsing, passphrase handling and printing around
LocalDevice. Every failure becomes one line on stderr and a non-zero exit status."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from .device import LocalDevice, Received
from .errors import ApiError, ClientError

DEFAULT_SERVER = "http://127.0.0.1:8000"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SERVER = 3
EXIT_BUG = 70


class UsageError(ClientError):
    pass


class Parser(argparse.ArgumentParser):
    """argparse that reports bad input in one line instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> Parser:
    parser = Parser(prog="python -m enigmo.client", description="Enigmo end-to-end encrypted messenger, from a terminal.")
    parser.add_argument("--server", help=f"server URL (default: $ENIGMO_SERVER or {DEFAULT_SERVER}; saved in the store)")
    parser.add_argument("--profile", default=os.environ.get("ENIGMO_PROFILE", "default"),
                        help="names the default store ~/.enigmo/PROFILE.json (default: default)")
    parser.add_argument("--store", help="path of the encrypted key store (overrides --profile)")
    parser.add_argument("--passphrase-file", help="read the store passphrase from this file (else $ENIGMO_PASSPHRASE, else a prompt)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    p = sub.add_parser("register", help="create an account and this device's keys")
    p.add_argument("username")
    p.add_argument("--display-name", default="")
    p.add_argument("--device-name", default="enigmo-cli")

    sub.add_parser("login", help="log this device in again (new token) and top up prekeys")

    p = sub.add_parser("link", help="add this computer as a new device of an existing account")
    p.add_argument("--device-name", default="enigmo-cli")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for approval (default 600)")

    p = sub.add_parser("approve", help="approve a device that is showing a link code")
    p.add_argument("code", nargs="+", help="CODE-CHECK as the new device shows it (spaces and case do not matter), "
                                           "or its enigmo-link:… QR payload")

    sub.add_parser("devices", help="list this account's devices")
    sub.add_parser("conversations", help="list conversations")

    p = sub.add_parser("start", help="start (or find) a direct conversation")
    p.add_argument("user")

    p = sub.add_parser("group", help="create a group conversation")
    p.add_argument("name")
    p.add_argument("users", nargs="+")

    p = sub.add_parser("send", help="send a message (CONV: id, id prefix, group name or username)")
    p.add_argument("conversation")
    p.add_argument("text", nargs="?", default="")
    p.add_argument("--attach", metavar="FILE", help="send FILE as an encrypted attachment (TEXT is its caption)")
    p.add_argument("--expires", type=int, metavar="SECONDS", help="the server deletes this message after SECONDS")

    p = sub.add_parser("timer", help="set disappearing messages for a conversation (0 = off)")
    p.add_argument("conversation")
    p.add_argument("seconds", type=int)

    p = sub.add_parser("follow", help="print incoming messages as they arrive")
    p.add_argument("--count", type=int, help="stop after COUNT messages")
    p.add_argument("--idle", type=float, help="stop after IDLE seconds without traffic")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--save-dir", help="where attachments are saved (default: next to the store)")

    p = sub.add_parser("history", help="show a conversation (this device's local copy, after catching up)")
    p.add_argument("conversation")
    p.add_argument("--json", action="store_true")
    p.add_argument("--save-dir", help="where attachments are saved (default: next to the store)")

    p = sub.add_parser("safety", help="show the 60-digit safety number with USER")
    p.add_argument("user")
    p.add_argument("--verify", action="store_true", help="mark it verified (you compared it in person)")
    p.add_argument("--accept", action="store_true", help="accept a changed safety number")
    return parser


# --- plumbing --------------------------------------------------------------------------------


def store_path(args: argparse.Namespace) -> Path:
    if args.store:
        return Path(args.store).expanduser()
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.profile):
        raise UsageError("--profile may only hold letters, digits, '.', '_' and '-'")
    return Path("~/.enigmo").expanduser() / f"{args.profile}.json"


def passphrase(args: argparse.Namespace, *, confirm: bool = False) -> str:
    if args.passphrase_file:
        try:
            text = Path(args.passphrase_file).expanduser().read_text("utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read --passphrase-file: {exc.strerror or exc}") from None
        text = text.rstrip("\r\n")
    elif os.environ.get("ENIGMO_PASSPHRASE"):
        text = os.environ["ENIGMO_PASSPHRASE"]
    else:
        if not sys.stdin.isatty():
            raise UsageError("no passphrase: use --passphrase-file or set ENIGMO_PASSPHRASE")
        text = getpass.getpass("Key store passphrase: ")
        if confirm and getpass.getpass("Repeat it: ") != text:
            raise UsageError("the passphrases differ")
    if not text:
        raise UsageError("the passphrase is empty")
    return text


def server_url(args: argparse.Namespace) -> str:
    return args.server or os.environ.get("ENIGMO_SERVER") or DEFAULT_SERVER


def open_device(args: argparse.Namespace) -> LocalDevice:
    return LocalDevice.open(store_path(args), passphrase(args), server=args.server)


def save_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "save_dir", None):
        return Path(args.save_dir).expanduser()
    path = store_path(args)
    return path.with_name(path.stem + "-files")


def short(conversation_id: str) -> str:
    return conversation_id[:8]


def when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S")


def save_attachment(device: LocalDevice, attachment: dict[str, Any], message_id: str, directory: Path) -> Path:
    data = device.attachment_fetch(attachment)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", attachment.get("name") or "attachment")[:100] or "attachment"
    target = directory / f"{message_id[:8]}-{name}"
    target.write_bytes(data)
    return target


def describe(msg: Received, names: dict[str, str]) -> str:
    where = names.get(msg.conversation_id) or short(msg.conversation_id)
    who = f"{msg.sender}" + (f" (device {msg.sender_device})" if msg.mine else "")
    if msg.error:
        return f"[{where}] {who}: could not decrypt a message ({msg.error})"
    content = msg.content or {}
    kind = content.get("type")
    stamp = when(content.get("sent_ms", 0))
    if kind == "text":
        return f"{stamp} [{where}] {who}: {content['body']}"
    if kind == "attachment":
        a = content["attachment"]
        caption = f" {content['caption']}" if content.get("caption") else ""
        return f"{stamp} [{where}] {who}: [file {a['name']}, {a['size']} bytes]{caption}"
    if kind == "timer":
        seconds = content["seconds"]
        return f"{stamp} [{where}] {who} set disappearing messages to " + (f"{seconds}s" if seconds else "off")
    if kind == "reaction":
        return f"{stamp} [{where}] {who} reacted {content['emoji']}"
    if kind == "delete":
        return f"{stamp} [{where}] {who} deleted a message"
    return f"{stamp} [{where}] {who}: ({kind})"


def as_json(msg: Received, saved: Path | None = None) -> str:
    out: dict[str, Any] = {"conversation_id": msg.conversation_id, "id": msg.id, "seq": msg.seq,
                           "sender": msg.sender, "sender_device": msg.sender_device, "mine": msg.mine,
                           "expires_at": msg.expires_at}
    if msg.error:
        out["error"] = msg.error
    else:
        out["content"] = msg.content
    if saved:
        out["saved_to"] = str(saved)
    return json.dumps(out, ensure_ascii=False)


# --- commands --------------------------------------------------------------------------------


def cmd_register(args: argparse.Namespace) -> None:
    device = LocalDevice.register(store_path(args), passphrase(args, confirm=True), server=server_url(args),
                                  username=args.username.lower(), display_name=args.display_name,
                                  device_name=args.device_name)
    print(f"Registered {device.username} (device {device.device_id}) on {device.api.server}.")
    print(f"Keys saved in {device.store.path}. Keep the passphrase: without it the keys are unreadable.")


def cmd_login(args: argparse.Namespace) -> None:
    device = open_device(args)
    device.login()
    print(f"Logged in as {device.username} (device {device.device_id}).")


def cmd_link(args: argparse.Namespace) -> None:
    path = store_path(args)
    if path.exists():
        device = LocalDevice.resume(path, passphrase(args))
        link = device.store.data.get("link")
        if not link:
            raise ClientError(f"{path} already belongs to a device; use another --store or --profile")
    else:
        device, _ = LocalDevice.link_start(path, passphrase(args, confirm=True), server=server_url(args),
                                           device_name=args.device_name)
    code = device.link_code
    print(f"Link code: {code}")
    print(f"On a device that is already logged in, run:  python -m enigmo.client approve {code}")
    print(f"(or paste the QR payload instead: {device.link_qr})", flush=True)
    try:
        device.link_wait(timeout=args.timeout)
    except ApiError as err:
        if err.code == "link_not_found":
            path.unlink(missing_ok=True)
            raise ClientError("the link code expired or was used; run `link` again") from None
        raise
    print(f"Linked: this is device {device.device_id} of {device.username}.")


def cmd_approve(args: argparse.Namespace) -> None:
    device = open_device(args)
    added = device.link_approve(" ".join(args.code))
    print(f"Approved device {added['device_id']} ({added['name'] or 'unnamed'}) for {device.username}.")


def cmd_devices(args: argparse.Namespace) -> None:
    device = open_device(args)
    for d in device.devices():
        mark = "*" if d["current"] else " "
        seen = d["last_seen_at"] or "never"
        print(f"{mark} {d['device_id']:>3}  {d['name'] or '-':<24} created {d['created_at']}  last seen {seen}")


def cmd_conversations(args: argparse.Namespace) -> None:
    device = open_device(args)
    listed = device.conversations()
    if not listed:
        print("No conversations yet. Start one with `start USER` or `group NAME USER...`.")
    for c in listed:
        others = [p["user_id"] for p in c["participants"] if p["user_id"] != device.username]
        label = c.get("name") or ", ".join(others) or "(only you)"
        timer = f"  disappearing {c['disappearing_seconds']}s" if c.get("disappearing_seconds") else ""
        print(f"{c['id']}  {c['kind']:<6} {label}  unread {c['unread_count']}{timer}")


def cmd_start(args: argparse.Namespace) -> None:
    device = open_device(args)
    detail = device.conversation_create("direct", [args.user.lower()])
    print(detail["id"])


def cmd_group(args: argparse.Namespace) -> None:
    device = open_device(args)
    detail = device.conversation_create("group", [u.lower() for u in args.users], name=args.name)
    print(detail["id"])


def cmd_send(args: argparse.Namespace) -> None:
    if args.expires is not None and args.expires <= 0:
        raise UsageError("--expires must be a positive number of seconds")
    device = open_device(args)
    conversation_id = device.resolve(args.conversation)
    if args.attach:
        sent = device.send_attachment(conversation_id, args.attach, args.text, expires_in=args.expires)
    else:
        sent = device.send_text(conversation_id, args.text, expires_in=args.expires)
    expiry = f", disappears at {sent.expires_at}" if sent.expires_at else ""
    print(f"Sent #{sent.seq} to {sent.recipients} device(s){expiry}.")


def cmd_timer(args: argparse.Namespace) -> None:
    if args.seconds < 0:
        raise UsageError("seconds must be 0 (off) or more")
    device = open_device(args)
    conversation_id = device.resolve(args.conversation)
    device.timer_set(conversation_id, args.seconds)
    print(f"Disappearing messages {'set to ' + str(args.seconds) + 's' if args.seconds else 'off'}.")


def cmd_follow(args: argparse.Namespace) -> None:
    device = open_device(args)
    names = {cid: c.get("name") for cid, c in device.store.data["conversations"].items() if c.get("name")}
    directory = save_dir(args)
    seen = 0

    def on_message(msg: Received) -> None:
        nonlocal seen
        seen += 1
        saved = None
        if msg.content and msg.content.get("type") == "attachment":
            try:
                saved = save_attachment(device, msg.content["attachment"], msg.id, directory)
            except ClientError as exc:
                print(f"(attachment not saved: {exc.message})", file=sys.stderr)
        if args.json:
            print(as_json(msg, saved), flush=True)
        else:
            print(describe(msg, names) + (f"  -> {saved}" if saved else ""), flush=True)

    if not args.json:
        print(f"Following as {device.username} (device {device.device_id}); Ctrl-C to stop.", file=sys.stderr, flush=True)
    device.follow(on_message, stop=lambda: args.count is not None and seen >= args.count, idle_timeout=args.idle)


def cmd_history(args: argparse.Namespace) -> None:
    device = open_device(args)
    conversation_id = device.resolve(args.conversation)
    device.catch_up(conversation_id)
    directory = save_dir(args)
    shown = device.history(conversation_id)
    for h in shown:
        saved = None
        if h["attachment"] and not h["mine"]:
            try:
                saved = save_attachment(device, h["attachment"], h["id"], directory)
            except ClientError as exc:
                saved = None
                print(f"(attachment {h['attachment']['name']} not available: {exc.message})", file=sys.stderr)
        if args.json:
            print(json.dumps({**h, "saved_to": str(saved) if saved else None}, ensure_ascii=False))
            continue
        who = "you" if h["mine"] and h["device"] == device.device_id else h["sender"]
        body = h["body"]
        if h["attachment"]:
            body = f"[file {h['attachment']['name']}, {h['attachment']['size']} bytes] {body}".rstrip()
        expiry = "  (disappearing)" if h["expires_at"] else ""
        print(f"#{h['seq']:<4} {when(h['sent_ms'])} {who}: {body}{expiry}" + (f"  -> {saved}" if saved else ""))
    if shown:  # what was printed has been read: `conversations` stops counting it as unread
        device.mark_read(conversation_id, max(h["seq"] for h in shown))


def cmd_safety(args: argparse.Namespace) -> None:
    device = open_device(args)
    if args.user.lower() == device.username:
        raise UsageError("that is you: a safety number compares your keys with someone else's")
    result = device.safety(args.user.lower(), verify=args.verify, accept=args.accept)
    digits = result["formatted"].split()
    print(f"Safety number with {args.user.lower()}:")
    for row in range(0, 12, 4):
        print("  " + " ".join(digits[row:row + 4]))
    state = {"new": "first seen now", "ok": "unchanged", "changed": "CHANGED since you last saw it",
             "blocked": "CHANGED: sending is blocked until you run `safety USER --accept`"}[result["status"]]
    print(f"Status: {state}{'; verified' if result['verified'] else ''}.")


COMMANDS = {
    "register": cmd_register, "login": cmd_login, "link": cmd_link, "approve": cmd_approve,
    "devices": cmd_devices, "conversations": cmd_conversations, "start": cmd_start, "group": cmd_group,
    "send": cmd_send, "timer": cmd_timer, "follow": cmd_follow, "history": cmd_history, "safety": cmd_safety,
}


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL) if hasattr(signal, "SIGPIPE") else None
    try:
        args = build_parser().parse_args(argv)
        COMMANDS[args.command](args)
        return 0
    except UsageError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as exc:
        print(f"error: {explain(exc)}", file=sys.stderr)
        return EXIT_SERVER
    except ClientError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("ENIGMO_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set ENIGMO_DEBUG=1 for details)", file=sys.stderr)
        return EXIT_BUG


def explain(err: ApiError) -> str:
    """Server errors in words; the code stays visible for bug reports."""
    hints = {
        "username_taken": "that username is taken",
        "user_not_found": "no such user",
        "login_failed": "the server does not know this device (revoked or wrong server?)",
        "link_not_found": "no pending link with that code (expired or already used)",
        "rate_limited": "too many requests" + (f"; retry in {err.retry_after}s" if err.retry_after else ""),
        "not_found": "not found, or not yours",
    }
    detail = hints.get(err.code, err.detail)
    extra = ""
    fields = err.extra.get("fields")
    if err.code == "invalid" and isinstance(fields, dict) and not all(str(name) in detail for name in fields):
        extra = f" ({fields})"
    return f"{detail}{extra} [{err.status} {err.code}]"
