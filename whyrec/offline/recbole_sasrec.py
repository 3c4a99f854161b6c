"""RecBole 1.2.1 SASRec as a peer baseline, on whyrec's evaluation protocol. A standalone script.

Runs under the RecBole virtualenv (``bash scripts/setup-recbole.sh`` makes ``.venv-recbole``), which
does not have whyrec installed, so this file imports nothing from whyrec::

    .venv-recbole/bin/python whyrec/recbole_sasrec.py --sequences seqs.json --eval-users users.json \\
        --out result.json [--epochs N] [--seed S] [--threads T] [--workdir DIR] [--no-refit]

``seqs.json`` maps user id -> item ids in time order (each user's whole sequence: the last item is
the test target, the second-last the validation target). ``users.json`` lists the users to score.

Training follows RecBole's own leave-one-out split (LS valid_and_test, order TO), so the model never
sees a validation or test target as a training label; early stopping watches validation NDCG@10.
Then, unless ``--no-refit``, a fresh SASRec is trained for the best epoch count on every item
before each user's last one (RecBole's LS test_only split, no validation at all), the same refit
whyrec's own sequence model gets: the validation transitions are the most recent ones, and leaving
them out of the final model would handicap the baseline. The last item is never a training label.
RecBole 1.2.1 does not exclude a user's history items when it ranks for sequential models, so the
best checkpoint is re-scored here: full catalog (every item RecBole knows), history items (every
item before the target) set to -inf, rank of the target 1-based with ties counting half. That is
the protocol of whyrec.offline.evaluation, so the numbers compare like with like.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

DATASET = "whyrec"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequences", required=True, type=Path, help="JSON: user id -> item ids in time order")
    parser.add_argument("--eval-users", required=True, type=Path, help="JSON: list of user ids to score on their last item")
    parser.add_argument("--out", required=True, type=Path, help="where to write the metrics (JSON)")
    parser.add_argument("--epochs", type=int, default=300, help="most epochs; early stopping usually ends sooner (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep RecBole's files here (default: a temp dir, removed after)")
    parser.add_argument("--no-refit", dest="refit", action="store_false", help="score the early-stopped model instead of refitting it on the validation items too")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[sasrec] {message}", file=sys.stderr, flush=True)


def read_inputs(args: argparse.Namespace) -> tuple[dict[str, list[str]], list[str]]:
    sequences = json.loads(args.sequences.read_text(encoding="utf-8"))
    if not isinstance(sequences, dict) or not sequences:
        raise SystemExit(f"{args.sequences}: expected a non-empty JSON object user id -> item ids")
    sequences = {str(u): [str(i) for i in items] for u, items in sequences.items()}
    for user, items in sequences.items():
        for item in items:
            if not item or any(c in item for c in "\t\n\r"):
                raise SystemExit(f"{args.sequences}: user {user!r}: item id {item!r} is empty or holds a tab/newline")
        if any(c in user for c in "\t\n\r") or not user:
            raise SystemExit(f"{args.sequences}: user id {user!r} is empty or holds a tab/newline")
    eval_users = [str(u) for u in json.loads(args.eval_users.read_text(encoding="utf-8"))]
    unknown = [u for u in eval_users if u not in sequences]
    if unknown:
        raise SystemExit(f"{args.eval_users}: {len(unknown)} eval users have no sequence, e.g. {unknown[:3]}")
    return sequences, eval_users


def write_atomic_files(sequences: dict[str, list[str]], data_dir: Path) -> None:
    """One RecBole .inter file; timestamp = position, so RecBole's time order is the given order."""
    folder = data_dir / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{DATASET}.inter", "w", encoding="utf-8") as out:
        out.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, items in sequences.items():
            out.writelines(f"{user}\t{item}\t{position}\n" for position, item in enumerate(items))


def import_recbole():
    """Import RecBole with the patches it needs on torch 2.13 (see ../shared/notes/offline-models.md)."""
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    import torch

    # torch >= 2.6 loads with weights_only=True, which refuses RecBole's pickled checkpoint config.
    original_load = torch.load

    def load(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return original_load(*args, **kwargs)

    torch.load = load
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    # recbole.model.sequential_recommender.sine switches anomaly detection on for the whole process
    # when imported; left on, training is ~3x slower.
    torch.autograd.set_detect_anomaly(False)
    return torch, Config, create_dataset, data_preparation, SASRec, Trainer, init_logger, init_seed


def config_dict(workdir: Path, epochs: int, seed: int) -> dict:
    return {
        "data_path": str(workdir / "data"),
        "checkpoint_dir": str(workdir / "saved"),  # own folder: RecBole names checkpoints by the second
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 50,
        # SASRec
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "hidden_size": 64,
        "inner_size": 256,
        "n_layers": 2,
        "n_heads": 2,
        "hidden_dropout_prob": 0.5,
        "attn_dropout_prob": 0.5,
        "learning_rate": 1e-3,
        "train_batch_size": 256,
        "eval_batch_size": 1024,
        # Training and evaluation
        "epochs": epochs,
        "eval_step": 1,
        "stopping_step": 10,
        "eval_args": {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": "full"},
        "metrics": ["Recall", "NDCG", "MRR"],
        "topk": [10, 50],
        "valid_metric": "NDCG@10",
        "seed": seed,
        "reproducibility": True,
        "use_gpu": False,
        "device": "cpu",
        "worker": 0,
        "show_progress": False,
        "log_wandb": False,
        "state": "INFO",
    }


def rank_of(scores, target: int) -> float:
    """1-based rank of `target`; ties count half (their expected rank)."""
    value = scores[target]
    higher = int((scores > value).sum())
    ties = int((scores == value).sum()) - 1
    return 1 + higher + ties / 2


def rescore(torch, model, dataset, config, sequences: dict[str, list[str]], eval_users: list[str]) -> tuple[list[float], int]:
    """Rank each eval user's last item over all items, history excluded. Returns ranks and the skipped count."""
    item_field = config["ITEM_ID_FIELD"]
    seq_field = item_field + config["LIST_SUFFIX"]
    len_field = config["ITEM_LIST_LENGTH_FIELD"]
    max_len = config["MAX_ITEM_LIST_LENGTH"]
    token2id = dataset.field2token_id[item_field]
    from recbole.data.interaction import Interaction

    cases = []
    skipped = 0
    for user in eval_users:
        items = sequences[user]
        if len(items) < 2:
            skipped += 1  # no history to predict from
            continue
        history = [token2id[i] for i in items[:-1]]
        cases.append((history, token2id[items[-1]]))

    ranks: list[float] = []
    model.eval()
    batch = 512
    with torch.no_grad():
        for start in range(0, len(cases), batch):
            chunk = cases[start : start + batch]
            seqs = torch.zeros((len(chunk), max_len), dtype=torch.long)
            lengths = torch.zeros(len(chunk), dtype=torch.long)
            for row, (history, _) in enumerate(chunk):
                recent = history[-max_len:]
                seqs[row, : len(recent)] = torch.tensor(recent)  # RecBole's layout: left-aligned, 0-padded
                lengths[row] = len(recent)
            scores = model.full_sort_predict(Interaction({seq_field: seqs, len_field: lengths})).double()
            scores[:, 0] = -math.inf  # padding id, not an item
            for row, (history, target) in enumerate(chunk):
                row_scores = scores[row]
                row_scores[history] = -math.inf  # every item before the target, not only the last 50
                ranks.append(rank_of(row_scores, target))
    return ranks, skipped


def metrics(ranks: list[float]) -> dict[str, float]:
    n = len(ranks)
    if n == 0:
        return {"ndcg@10": 0.0, "recall@10": 0.0, "recall@50": 0.0, "mrr": 0.0}
    return {
        "ndcg@10": sum(1 / math.log2(r + 1) if r <= 10 else 0.0 for r in ranks) / n,
        "recall@10": sum(r <= 10 for r in ranks) / n,
        "recall@50": sum(r <= 50 for r in ranks) / n,
        "mrr": sum(1 / r for r in ranks) / n,
    }


def run(args: argparse.Namespace, workdir: Path) -> dict:
    sequences, eval_users = read_inputs(args)
    write_atomic_files(sequences, workdir / "data")
    log(f"{len(sequences)} users, {sum(map(len, sequences.values()))} interactions, {len(eval_users)} eval users; workdir {workdir}")

    torch, Config, create_dataset, data_preparation, SASRec, Trainer, init_logger, init_seed = import_recbole()
    if args.threads:
        torch.set_num_threads(args.threads)
    # RecBole writes ./log and ./log_tensorboard relative to the working directory.
    os.chdir(workdir)
    config = Config(model="SASRec", dataset=DATASET, config_dict=config_dict(workdir, args.epochs, args.seed))
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.autograd.set_detect_anomaly(False)
    if args.threads:
        torch.set_num_threads(args.threads)

    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = Trainer(config, model)

    epochs_run, best_epoch = 0, 0
    train_epoch, save_checkpoint = trainer._train_epoch, trainer._save_checkpoint

    def counted_train_epoch(*a, **k):
        nonlocal epochs_run
        epochs_run += 1
        return train_epoch(*a, **k)

    def noted_save_checkpoint(epoch, *a, **k):  # called when validation improves
        nonlocal best_epoch
        best_epoch = epoch + 1
        return save_checkpoint(epoch, *a, **k)

    trainer._train_epoch, trainer._save_checkpoint = counted_train_epoch, noted_save_checkpoint
    started = time.perf_counter()
    best_valid_score, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    train_seconds = time.perf_counter() - started
    log(f"trained {epochs_run} epochs in {train_seconds:.0f}s; best valid NDCG@10 {best_valid_score:.4f} at epoch {best_epoch}")

    # RecBole's own test figures (history NOT excluded), for comparison with its printed numbers.
    recbole_test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    log(f"RecBole's own test result (history not excluded): {dict(recbole_test)}")

    checkpoint = torch.load(trainer.saved_model_file, map_location="cpu")
    model.load_state_dict(checkpoint["state_dict"])
    ranks, skipped = rescore(torch, model, dataset, config, sequences, eval_users)
    early_stopped = metrics(ranks)
    log("early-stopped model re-scored with history excluded: " + ", ".join(f"{k} {v:.4f}" for k, v in early_stopped.items()) + f" ({len(ranks)} users)")
    result = dict(early_stopped)
    refit_seconds = 0.0
    if args.refit:
        started = time.perf_counter()
        refit_config = Config(
            model="SASRec",
            dataset=DATASET,
            config_dict={
                **config_dict(workdir, max(1, best_epoch), args.seed),
                "checkpoint_dir": str(workdir / "saved-refit"),
                # Only the last item is held out; no validation runs, so nothing peeks at it.
                "eval_args": {"split": {"LS": "test_only"}, "group_by": "user", "order": "TO", "mode": "full"},
                "eval_step": 0,
            },
        )
        init_seed(refit_config["seed"], refit_config["reproducibility"])
        torch.autograd.set_detect_anomaly(False)
        refit_dataset = create_dataset(refit_config)
        refit_train, _, _ = data_preparation(refit_config, refit_dataset)
        init_seed(refit_config["seed"] + refit_config["local_rank"], refit_config["reproducibility"])
        refit_model = SASRec(refit_config, refit_train._dataset).to(refit_config["device"])
        Trainer(refit_config, refit_model).fit(refit_train, None, saved=False, show_progress=False)
        refit_seconds = time.perf_counter() - started
        ranks, skipped = rescore(torch, refit_model, refit_dataset, refit_config, sequences, eval_users)
        result = metrics(ranks)
        log(f"refit for {max(1, best_epoch)} epochs in {refit_seconds:.0f}s, re-scored with history excluded: "
            + ", ".join(f"{k} {v:.4f}" for k, v in result.items()) + f" ({len(ranks)} users)")
    result.update(
        {
            "users": len(ranks),
            "skipped_users": skipped,
            "items": int(dataset.item_num - 1),
            "train_seconds": round(train_seconds, 1),
            "best_valid_ndcg@10": float(best_valid_score),
            "epochs_run": epochs_run,
            "best_epoch": best_epoch,
            "refit": bool(args.refit),
            "refit_seconds": round(refit_seconds, 1),
            # The early-stopped model's figures, when the main ones are the refit model's.
            **({f"early_stopped_{k}": v for k, v in early_stopped.items()} if args.refit else {}),
            # RecBole's own test figures, history not excluded (e.g. "recbole_unmasked_ndcg@10")
            **{f"recbole_unmasked_{k}": float(v) for k, v in recbole_test.items()},
            "seed": args.seed,
            "threads": torch.get_num_threads(),
        }
    )
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("sequences", "eval_users", "out", "workdir"):
        value = getattr(args, name)
        if value is not None:
            setattr(args, name, value.resolve())  # before RecBole's chdir
    if args.threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        os.environ.setdefault("MKL_NUM_THREADS", str(args.threads))
    # RecBole prints to stdout in a few places; keep stdout clean, everything is progress.
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    cwd = Path.cwd()
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="whyrec-recbole-")) if temporary else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, workdir)
    finally:
        os.chdir(cwd)
        sys.stdout = real_stdout
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
