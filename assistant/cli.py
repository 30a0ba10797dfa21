"""The `assistant` command: init, serve, user management (and eval/train when present)."""

from __future__ import annotations

import argparse
import os
import sys

from assistant import eval_reward, eval_safety, train_cli
from assistant.config import Config, load_config
from assistant.logs import configure_logging
from feedback_store import users
from feedback_store.db import open_db, redacted, transaction
from feedback_store.errors import AssistantError


def build_engine(config: Config):
    """Load the shared base (from its safetensors cache) into a generation engine."""
    import torch

    from adapters.base_model import load_base
    from assistant.engine import Engine

    if config.model.threads > 0:
        torch.set_num_threads(config.model.threads)
    base = load_base(config.model.path, config.cache_dir, config.model.device, config.model.dtype)
    return Engine(base.model, base.tokenizer, base.base_id,
                  context_tokens=config.model.context_tokens,
                  cache_size=config.adapters.cache_size,
                  max_batch_rows=config.model.max_batch_rows,
                  prefix_cache_tokens=config.model.prefix_cache_tokens)


def cmd_init(args: argparse.Namespace, config: Config) -> None:
    """Prepare the model cache and database; make sure an admin exists."""
    from adapters.base_model import prepare_cache, resolve_source

    source = resolve_source(config.model.path, config.cache_dir)
    prepare_cache(source, config.cache_dir)
    print(f"base model: {source.base_id}")
    db = open_db(config.store_target)
    print(f"database: {redacted(config.store_target)}")
    if not users.admin_exists(db):
        with transaction(db):
            _, key = users.create_user(db, "admin", admin=True)
        if config.server.admin_key:
            # The operator already holds a key that acts as this admin: printing a second
            # live key would only leave it in whatever captures stdout (a unit's journal).
            print("created user 'admin' (role admin); ASSISTANT_ADMIN_KEY acts as it "
                  "(`assistant user rotate admin` gives it a key of its own)")
        else:
            print("created user 'admin' (role admin). Its API key, shown only this once:")
            print(key)
    db.close()


def cmd_serve(args: argparse.Namespace, config: Config) -> None:
    import uvicorn

    from assistant.app import create_app

    cmd_init(args, config)
    engine = build_engine(config)
    if config.serving.backend == "ray":     # generation on Ray Serve replicas
        from assistant.ray_serving import remote_engine

        engine = remote_engine(config, engine)
    app = create_app(config, engine)
    print(f"serving on http://{config.server.host}:{config.server.port}/", flush=True)
    uvicorn.run(app, host=config.server.host, port=config.server.port, log_level="warning")


def _with_db(config: Config, fn, *args):
    db = open_db(config.store_target)
    try:
        with transaction(db):
            return fn(db, *args)
    finally:
        db.close()


def cmd_user_add(args: argparse.Namespace, config: Config) -> None:
    user, key = _with_db(config, users.create_user, args.name, args.admin)
    print(f"created user {user['name']!r} (id {user['id']}, role {user['role']})")
    print(key)


def cmd_user_list(args: argparse.Namespace, config: Config) -> None:
    for u in _with_db(config, users.list_users):
        print(f"{u['id']:>4}  {u['name']:<24} {u['role']:<6} version={u['current_version']}")


def cmd_user_rotate(args: argparse.Namespace, config: Config) -> None:
    user = _with_db(config, users.get_user_by_name, args.name)
    print(_with_db(config, users.rotate_key, user["id"]))


def cmd_user_revoke(args: argparse.Namespace, config: Config) -> None:
    user = _with_db(config, users.get_user_by_name, args.name)
    print(f"revoked {_with_db(config, users.revoke_keys, user['id'])} key(s) of {args.name!r}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="assistant", description=__doc__)
    p.add_argument("--config", help="config file (default: ASSISTANT_CONFIG or ./config.toml)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="prepare model cache and database").set_defaults(func=cmd_init)
    sub.add_parser("serve", help="init, then run the server").set_defaults(func=cmd_serve)
    user = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", help="create a user; prints the key on the last line")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="give the admin role")
    add.set_defaults(func=cmd_user_add)
    user.add_parser("list").set_defaults(func=cmd_user_list)
    for action, func, text in [("rotate", cmd_user_rotate, "revoke all keys, print a new one"),
                               ("revoke", cmd_user_revoke, "revoke all keys")]:
        cmd = user.add_parser(action, help=text)
        cmd.add_argument("name")
        cmd.set_defaults(func=func)
    eval_reward.add_parser(sub)
    eval_safety.add_parser(sub)
    train_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Everything the assistant writes (database, adapters, logs) holds people's data: files
    # readable by their owner only, whatever the shell's umask.
    os.umask(0o077)
    try:
        config = load_config(args.config)
        configure_logging(config.server.log_level)
        args.func(args, config)
    except AssistantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
