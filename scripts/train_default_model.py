#!/usr/bin/env python3
"""Trains gemma4's embedded default model (python/gemma4/default_model/): the whole recipe.

    python scripts/train_default_model.py                      # writes python/gemma4/default_model/
    python scripts/train_default_model.py --out /tmp/m --steps 20   # a quick try

Steps, all deterministic for a given --seed (and --threads: float sums depend on the thread split):

1. Text: Jane Austen's six novels (public domain) as shipped by Debian's `r-cran-janeaustenr`
   package (MIT; the R package "janeaustenr" by Julia Silge, texts from Project Gutenberg). The
   .deb is fetched with `apt-get download` (or read from --deb / an installed copy) and its R
   lazy-load database is decoded by the small R-serialization reader below: no R needed. Lines are
   joined into paragraphs, `_italics_` markers dropped; the last 2% of each novel's paragraphs are
   held out for validation.
2. Tokenizer: a Gemma-style BPE (spaces as "▁", byte fallback) trained with `tokenizers` on the
   training paragraphs. Ids 0-107 keep Gemma 4's real special-token ids (<pad> 0, <eos> 1,
   <bos> 2, <unk> 3, <mask> 4, tool tokens 46-52, <|think|> 98, <|channel> 100, <channel|> 101,
   <|turn> 105, <turn|> 106, "\\n" 107; the other ids below 107 are <unusedN> placeholders); the
   multimodal tokens (real ids ~256k) move to 108-114, the 256 byte tokens <0x00>..<0xFF> follow,
   then the learned pieces. tokenizer_class GemmaTokenizer, a "<bos> $A" post-processor and the
   Gemma-4-style chat template of gemma4.tokenization (GEMMA4_CHAT_TEMPLATE).
3. Model: a Gemma 4 text decoder at toy width (6 layers: 4 sliding (window 64) + 2 full, the last
   two KV-shared with a double-wide MLP, per-layer embeddings of width 32, tied embeddings, final
   logit soft-capping), about 3 M parameters.
4. Training: gemma4.Gemma4ForCausalLM in float32 + torch.optim.AdamW on the model's own labels
   loss. 80% of the sequences are <bos> + a stretch of a novel from a paragraph start, 20% are
   multi-turn chats rendered with the chat template (consecutive paragraphs as user and model
   turns), so that `python -m gemma4 chat` answers in turns that end with <turn|>.
5. Saving: weights in bfloat16 (config dtype float32: the model loads as float32 by default),
   config.json, generation_config.json (sampling defaults), tokenizer files, chat_template.jinja
   and training_summary.json (seed, steps, losses, corpus hash, time).

docs/default_model.md describes the result.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import gemma4  # noqa: F401
except ImportError:  # a checkout without an install: python/ holds the package
    sys.path.insert(0, str(ROOT / "python"))
from gemma4.tokenization.gemma4_format import CONTROL_TOKENS as GEMMA_CONTROL  # noqa: E402
from gemma4.tokenization.gemma4_format import MODEL_SPECIFIC_TOKENS as MODEL_SPECIFIC  # noqa: E402
from gemma4.tokenization.gemma4_format import MULTIMODAL_TOKENS as MULTIMODAL  # noqa: E402
from gemma4.tokenization.gemma4_format import NEWLINE_ID  # noqa: E402

DEFAULT_OUT = ROOT / "python" / "gemma4" / "default_model"
DEB_PACKAGE = "r-cran-janeaustenr"
INSTALLED_RDATA = Path("/usr/lib/R/site-library/janeaustenr/data/Rdata")
BOOKS = {  # R object name -> title, in the order the corpus is built
    "sensesensibility": "Sense and Sensibility (1811)",
    "prideprejudice": "Pride and Prejudice (1813)",
    "mansfieldpark": "Mansfield Park (1814)",
    "emma": "Emma (1815)",
    "northangerabbey": "Northanger Abbey (1817)",
    "persuasion": "Persuasion (1817)",
}

# ------------------------------------------------------------------------------------------ text


class _RReader:
    """Reads R's XDR serialization format (version 2/3): only what janeaustenr's data uses."""

    def __init__(self, data: bytes):
        self.b, self.p, self.refs = data, 0, []
        if data[:2] != b"X\n":
            raise ValueError("not an XDR R serialization")
        self.p = 2
        version = self._int()
        self._int(), self._int()  # writer's and minimal reader's R versions
        if version == 3:
            n = self._int()  # native encoding name
            self.p += n

    def _int(self) -> int:
        v = struct.unpack_from(">i", self.b, self.p)[0]
        self.p += 4
        return v

    def _length(self) -> int:
        n = self._int()
        if n == -1:  # long vector
            n = (self._int() << 32) + self._int()
        return n

    def item(self):
        flags = self._int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind in (254, 242, 241, 253, 247, 251, 252):  # NULL, environments, missing/unbound markers
            return None
        if kind == 255:  # reference to an earlier symbol
            idx = flags >> 8 or self._int()
            return self.refs[idx - 1]
        if kind == 1:  # symbol: its name follows as a CHARSXP
            sym = ("sym", self.item())
            self.refs.append(sym)
            return sym
        if kind in (2, 6, 239, 240):  # pairlist / language: [(tag, value), ...]
            if has_attr:
                self.item()  # pairlist attributes: unused
            tag = self.item() if has_tag else None
            car, cdr = self.item(), self.item()
            return [(tag[1] if tag else None, car)] + (cdr if isinstance(cdr, list) else [])
        if kind == 9:  # CHARSXP
            n = self._int()
            if n == -1:
                return None  # NA_character_
            s = self.b[self.p:self.p + n].decode("utf-8")
            self.p += n
            return s
        if kind in (10, 13):  # logical, integer
            n = self._length()
            value = list(struct.unpack_from(f">{n}i", self.b, self.p))
            self.p += 4 * n
        elif kind == 14:  # double
            n = self._length()
            value = list(struct.unpack_from(f">{n}d", self.b, self.p))
            self.p += 8 * n
        elif kind in (16, 19, 20):  # character vector, list, expression
            value = [self.item() for _ in range(self._length())]
        else:
            raise ValueError(f"R object type {kind} is not supported by this reader")
        attrs = dict(self.item()) if has_attr else {}
        if kind == 19 and "names" in attrs:
            return dict(zip(attrs["names"], value))
        return value


def _unserialize(data: bytes):
    return _RReader(data).item()


def read_lazyload_db(stem: Path) -> dict[str, object]:
    """Objects of an R lazy-load database (stem.rdx index + stem.rdb blobs), e.g. a package's data/Rdata."""
    index = _unserialize(gzip.decompress(stem.with_suffix(".rdx").read_bytes()))
    blob_file = stem.with_suffix(".rdb").read_bytes()
    objects = {}
    for name, (offset, length) in index["variables"].items():
        blob = blob_file[offset:offset + length]
        body = blob[4:]  # 4-byte big-endian uncompressed length, then the compressed serialization
        compressed = index["compressed"][0] if isinstance(index["compressed"], list) else index["compressed"]
        if compressed in (2, 3):  # bzip2/xz databases carry a type byte
            import bz2  # noqa: PLC0415
            import lzma  # noqa: PLC0415

            kind, body = body[:1], body[1:]
            body = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress,
                    b"0": lambda x: x}[kind](body)
        else:
            body = zlib.decompress(body)
        objects[name] = _unserialize(body)
    return objects


def find_rdata(deb: str | None, cache: Path) -> tuple[Path, str]:
    """The janeaustenr data/Rdata stem and a description of where it came from."""
    if deb is None and INSTALLED_RDATA.with_suffix(".rdx").is_file():
        return INSTALLED_RDATA, f"installed Debian package {DEB_PACKAGE}"
    cache.mkdir(parents=True, exist_ok=True)
    if deb is None:
        debs = sorted(cache.glob(f"{DEB_PACKAGE}_*.deb"))
        if not debs:
            print(f"fetching {DEB_PACKAGE} with apt-get download ...", flush=True)
            r = subprocess.run(["apt-get", "download", DEB_PACKAGE], cwd=cache, capture_output=True, text=True)
            debs = sorted(cache.glob(f"{DEB_PACKAGE}_*.deb"))
            if not debs:
                sys.exit(f"apt-get download {DEB_PACKAGE} failed ({r.stderr.strip().splitlines()[-1:]}); run "
                         f"'apt-get update' first, or pass --deb PATH to a downloaded {DEB_PACKAGE}_*.deb")
        deb = str(debs[-1])
    extracted = cache / Path(deb).stem
    stem = extracted / "usr/lib/R/site-library/janeaustenr/data/Rdata"
    if not stem.with_suffix(".rdx").is_file():
        subprocess.run(["dpkg-deb", "-x", deb, str(extracted)], check=True)
    digest = hashlib.sha256(Path(deb).read_bytes()).hexdigest()
    return stem, f"{Path(deb).name} (sha256 {digest})"


def paragraphs(lines: list[str]) -> list[str]:
    """Hard-wrapped lines -> paragraphs (blank-line separated), whitespace collapsed, `_` markers dropped."""
    out, cur = [], []
    for line in [*lines, ""]:
        line = (line or "").strip()
        if line:
            cur.append(line)
        elif cur:
            out.append(" ".join(" ".join(cur).replace("_", "").split()))
            cur = []
    return [p for p in out if p]


def load_corpus(deb: str | None, cache: Path, val_fraction: float = 0.02):
    stem, source = find_rdata(deb, cache)
    objects = read_lazyload_db(stem)
    train, val = {}, {}
    for name in BOOKS:
        paras = paragraphs(objects[name])
        cut = len(paras) - max(1, int(len(paras) * val_fraction))
        train[name], val[name] = paras[:cut], paras[cut:]
    digest = hashlib.sha256("\n".join(p for b in BOOKS for p in train[b] + val[b]).encode()).hexdigest()
    return train, val, source, digest


# ------------------------------------------------------------------------------------- tokenizer

# Gemma 4's special-token table is the package's (gemma4.tokenization.gemma4_format); the multimodal tokens
# move to ids 108-114 here.

def train_tokenizer(texts: list[str], vocab_size: int):
    """Gemma-style BPE: learned pieces after Gemma 4's control tokens, the multimodal tokens and 256 bytes."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    id_to_token = dict(GEMMA_CONTROL)
    unused = 0
    for i in range(NEWLINE_ID):
        if i not in id_to_token:
            id_to_token[i] = f"<unused{unused}>"
            unused += 1
    id_to_token[NEWLINE_ID] = "\n"
    for t in MULTIMODAL:
        id_to_token[len(id_to_token)] = t
    vocab = {t: i for i, t in id_to_token.items()}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)

    # Learn pieces on words ("▁" starts a word, as SentencePiece), so that no merge crosses a word
    # boundary; the final pipeline (no pre-split, as GemmaTokenizer) then tokenizes identically.
    learner = Tokenizer(models.BPE())
    learner.normalizer = normalizers.Replace(" ", "▁")
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(vocab), min_frequency=2, show_progress=False)
    learner.train_from_iterator(texts, trainer=trainer)
    learned = json.loads(learner.to_str())["model"]
    for piece in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    added = {i: AddedToken(t, special=not t.startswith("<unused"), normalized=False)
             for i, t in sorted(id_to_token.items()) if t != "\n"}
    tok.add_tokens(list(added.values()))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos>:0 $A:0", pair="<bos>:0 $A:0 <bos>:1 $B:1", special_tokens=[("<bos>", 2)])
    for i, t in added.items():
        assert tok.token_to_id(t.content) == i, (i, t)
    return tok, added


def save_tokenizer(tok, added, out: Path) -> None:
    from gemma4.tokenization import GEMMA4_CHAT_TEMPLATE  # noqa: PLC0415

    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "GemmaTokenizer",
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>",
        **MODEL_SPECIFIC,
        "added_tokens_decoder": {str(i): {"content": t.content, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": t.special} for i, t in added.items()},
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1000000000000000019884624838656,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    (out / "chat_template.jinja").write_text(GEMMA4_CHAT_TEMPLATE, encoding="utf-8")


# ----------------------------------------------------------------------------------------- model

def model_config(vocab_size: int) -> dict:
    """The "default" preset (gemma4.presets) with the trained tokenizer's vocabulary size."""
    from gemma4.presets import preset_dict  # noqa: PLC0415

    return preset_dict("default", vocab_size=vocab_size, vocab_size_per_layer_input=vocab_size)


GENERATION_DEFAULTS = {"do_sample": True, "temperature": 0.8, "top_k": 50, "top_p": 0.95,
                       "bos_token_id": 2, "pad_token_id": 0, "eos_token_id": [1, 106]}


# -------------------------------------------------------------------------------------- training

class Batches:
    """Training sequences: <bos> + a stretch of a novel from a paragraph start, or a rendered chat."""

    def __init__(self, tokenizer, books: dict[str, list[str]], seq_len: int, chat_fraction: float, seed: int):
        self.tok, self.T, self.chat_fraction = tokenizer, seq_len, chat_fraction
        self.rng = random.Random(seed)
        self.bos, self.pad, self.nl = tokenizer.bos_token_id, tokenizer.pad_token_id, NEWLINE_ID
        self.paras: list[list[str]] = []  # per book
        self.streams: list[list[int]] = []  # per book: paragraph ids joined by "\n"
        self.starts: list[tuple[int, int]] = []  # (book, offset of a paragraph start)
        for b, paras in enumerate(books.values()):
            ids = tokenizer(paras, add_special_tokens=False)["input_ids"]
            stream = []
            for p in ids:
                self.starts.append((b, len(stream)))
                stream += p + [self.nl]
            self.paras.append(paras)
            self.streams.append(stream)
        self.n_tokens = sum(len(s) for s in self.streams)

    def text_sample(self) -> list[int]:
        b, off = self.starts[self.rng.randrange(len(self.starts))]
        seq = [self.bos] + self.streams[b][off:off + self.T - 1]
        return seq

    def chat_sample(self) -> list[int]:
        b = self.rng.randrange(len(self.paras))
        paras = self.paras[b]
        i = self.rng.randrange(len(paras) - 1)
        messages, budget = [], 0
        while i < len(paras) and budget < self.T:
            role = "user" if len(messages) % 2 == 0 else "assistant"
            messages.append({"role": role, "content": paras[i]})
            budget += len(paras[i]) // 4 + 6  # ~4 characters a token
            i += 1
        if messages[-1]["role"] == "user":
            messages = messages[:-1] or messages
        ids = self.tok.apply_chat_template(messages, tokenize=True, return_dict=False)
        return ids[:self.T]

    def next(self, batch_size: int):
        import torch  # noqa: PLC0415

        seqs = [self.chat_sample() if self.rng.random() < self.chat_fraction else self.text_sample()
                for _ in range(batch_size)]
        ids = torch.full((batch_size, self.T), self.pad, dtype=torch.long)
        labels = torch.full((batch_size, self.T), -100, dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = torch.tensor(s)
            labels[r, :len(s)] = torch.tensor(s)
        return ids, labels


def eval_sequences(tokenizer, books: dict[str, list[str]], seq_len: int) -> list[list[int]]:
    """Validation: each held-out stretch cut into <bos> + (seq_len - 1)-token pieces."""
    out = []
    for paras in books.values():
        stream = []
        for p in tokenizer(paras, add_special_tokens=False)["input_ids"]:
            stream += p + [NEWLINE_ID]
        for i in range(0, len(stream) - seq_len // 2, seq_len - 1):
            out.append([tokenizer.bos_token_id] + stream[i:i + seq_len - 1])
    return out


def evaluate(model, seqs: list[list[int]]) -> float:
    import torch  # noqa: PLC0415

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in seqs:
            x = torch.tensor([s])
            n = len(s) - 1
            total += model(input_ids=x, labels=x).loss.item() * n
            count += n
    model.train()
    return total / count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--deb", help=f"a downloaded {DEB_PACKAGE}_*.deb "
                        "(default: the installed package's files, else apt-get download)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "gemma4-default-model",
                        help="where the .deb is downloaded and unpacked")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: same result on every machine, and the fastest on a busy one)")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--chat-fraction", type=float, default=0.2)
    parser.add_argument("--eval-every", type=int, default=300)
    args = parser.parse_args(argv)

    import torch  # noqa: PLC0415

    import gemma4  # noqa: PLC0415  (the module-level import above found it)
    from gemma4 import AutoTokenizer  # noqa: PLC0415
    from gemma4.config import Gemma4Config  # noqa: PLC0415
    from gemma4.generation import GenerationConfig  # noqa: PLC0415
    from gemma4.modeling import Gemma4ForCausalLM  # noqa: PLC0415

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    # 1. text
    train, val, source, corpus_sha = load_corpus(args.deb, args.cache)
    n_chars = sum(len(p) for b in BOOKS for p in train[b])
    print(f"text: {source}; {sum(map(len, train.values()))} training paragraphs ({n_chars / 1e6:.2f} M characters), "
          f"{sum(map(len, val.values()))} held out; corpus sha256 {corpus_sha[:16]}", flush=True)

    # 2. tokenizer
    out = args.out
    tmp = Path(tempfile.mkdtemp(prefix="gemma4-default-"))
    tok_obj, added = train_tokenizer([p for b in BOOKS for p in train[b]], args.vocab_size)
    save_tokenizer(tok_obj, added, tmp)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp))
    assert len(tokenizer) == args.vocab_size, len(tokenizer)
    print(f"tokenizer: {len(tokenizer)} tokens ({time.perf_counter() - t_start:.0f} s)", flush=True)

    # 3. model
    config = Gemma4Config.from_dict(model_config(len(tokenizer)), source="train_default_model")
    model = Gemma4ForCausalLM(config).train()
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    print(f"model: {n_params / 1e6:.2f} M parameters", flush=True)

    # 4. training
    batches = Batches(tokenizer, train, args.seq_len, args.chat_fraction, args.seed)
    val_seqs = eval_sequences(tokenizer, val, args.seq_len)
    print(f"data: {batches.n_tokens / 1e6:.2f} M training tokens, {sum(len(s) - 1 for s in val_seqs)} validation "
          f"tokens; {args.steps} steps x {args.batch_size} x {args.seq_len}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    log, smooth = [], None
    t_train = time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        ids, labels = batches.next(args.batch_size)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = loss.item()
        smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
        entry = {"step": step + 1, "loss": round(value, 4)}
        if (step + 1) % 25 == 0 or step == 0:
            rate = (step + 1) * args.batch_size * args.seq_len / (time.perf_counter() - t_train)
            print(f"step {step + 1:5d}  loss {value:.3f}  (smoothed {smooth:.3f})  lr {lr_at(step):.2e}  "
                  f"{rate:.0f} tokens/s", flush=True)
        if args.eval_every and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            entry["val_loss"] = round(evaluate(model, val_seqs), 4)
            print(f"step {step + 1:5d}  validation loss {entry['val_loss']:.3f}", flush=True)
        log.append(entry)
    train_s = time.perf_counter() - t_train

    # 5. save: bfloat16 weights, float32 as the loading default
    model.eval()
    model = model.to(torch.bfloat16)
    val_bf16 = evaluate(model, val_seqs) if val_seqs else None
    if out.exists():
        for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                     "tokenizer_config.json", "chat_template.jinja", "training_summary.json"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    os.chmod(out / "model.safetensors", 0o644)  # safetensors writes 0600
    cfg = json.loads((out / "config.json").read_text())
    cfg["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    GenerationConfig(**GENERATION_DEFAULTS).save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tmp / name, out / name)
    shutil.rmtree(tmp, ignore_errors=True)
    last = [e["loss"] for e in log[-50:]]
    summary = {
        "text": {"package": DEB_PACKAGE, "source": source, "books": list(BOOKS.values()),
                 "corpus_sha256": corpus_sha, "training_tokens": batches.n_tokens,
                 "validation_tokens": sum(len(s) - 1 for s in val_seqs)},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k not in ("out", "cache", "deb")},
        "parameters": n_params,
        "final_train_loss_mean_last_50": round(sum(last) / len(last), 4),
        "final_val_loss_float32": next((e["val_loss"] for e in reversed(log) if "val_loss" in e), None),
        "final_val_loss_bfloat16": None if val_bf16 is None else round(val_bf16, 4),
        "train_seconds": round(train_s),
        "torch": torch.__version__, "gemma4": gemma4.__version__,
        "log": [e for e in log if e["step"] % 25 == 0 or "val_loss" in e or e["step"] == 1],
    }
    (out / "training_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"saved {out} ({sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 1e6:.1f} MB); "
          f"train {train_s / 60:.1f} min, total {(time.perf_counter() - t_start) / 60:.1f} min; final loss "
          f"{summary['final_train_loss_mean_last_50']} (train, last 50 steps), "
          f"{summary['final_val_loss_float32']} (validation), {summary['final_val_loss_bfloat16']} "
          "(validation, bfloat16 weights)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
