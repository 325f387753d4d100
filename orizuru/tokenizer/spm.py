"""Read a SentencePiece `.model` (Llama 2 / Swallow style) into an HF `tokenizers` pipeline.

Offline, with `sentencepiece`'s protobuf schema only. The conversion mirrors the one
`transformers` uses for Llama (legacy mode), generalised to what the `.model` file says:
BPE merges are recovered from the piece list (a merge's rank is the id of the piece it makes,
which is SentencePiece's score order), unigram pieces keep their scores, the normalizer
reproduces the file's NFKC charsmap, whitespace collapsing and dummy prefix, and the decoder
strips that prefix again. Control pieces become special tokens, user-defined pieces plain
added tokens, byte pieces feed byte fallback. Tests check the ids against `sentencepiece`.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, normalizers, processors
from tokenizers import Tokenizer as HFTokenizer

from orizuru.errors import UserError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2


def read_model_proto(path: str | Path):
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:
        raise UserError(f"{path}: reading SentencePiece models needs 'sentencepiece' and 'protobuf' ({e})") from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except OSError as e:
        raise UserError(f"{path}: cannot read SentencePiece model ({e.strerror})") from None
    except Exception as e:  # protobuf's DecodeError
        raise UserError(f"{path}: not a SentencePiece model ({e})") from None
    if not proto.pieces:
        raise UserError(f"{path}: not a SentencePiece model (no pieces)")
    return proto


def bpe_merges(vocab: dict[str, int], mergeable: set[str]) -> list[tuple[str, str]]:
    """Every split of a piece into two known pieces, ranked by the id of the piece they form."""
    merges = []
    for piece in sorted(mergeable, key=vocab.__getitem__):
        local = [(piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in mergeable and piece[i:] in mergeable]
        merges += sorted(local, key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
    return merges


def sentencepiece_parts(path: str | Path) -> tuple[HFTokenizer, dict]:
    """`path` (a SentencePiece BPE or unigram model) as an HF tokenizer and its special-token names."""
    proto = read_model_proto(path)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    pieces = list(proto.pieces)
    unk = pieces[spec.unk_id].piece if 0 <= spec.unk_id < len(pieces) else None
    # pieces SentencePiece never produces from text take no part in merges or the lattice
    plain = {p.piece for p in pieces if p.type in (NORMAL, USER_DEFINED)}
    if spec.model_type == BPE:
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        model = models.BPE(
            vocab=vocab, merges=bpe_merges(vocab, plain), unk_token=unk, byte_fallback=spec.byte_fallback, fuse_unk=True
        )
    elif spec.model_type == UNIGRAM:
        floor = min(p.score for p in pieces) - 100.0
        vocab = [(p.piece, p.score if p.piece in plain else floor) for p in pieces]
        model = models.Unigram(vocab, unk_id=spec.unk_id if unk else None, byte_fallback=spec.byte_fallback)
    else:
        raise UserError(f"{path}: SentencePiece model type {spec.model_type} is not supported (only unigram and BPE)")

    hf = HFTokenizer(model)
    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    hf.normalizer = normalizers.Sequence(steps)
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        dec.append(decoders.Strip(content=" ", left=1, right=0))
    hf.decoder = decoders.Sequence(dec)
    hf.add_tokens([AddedToken(p.piece, special=p.type in (CONTROL, UNKNOWN), normalized=False) for p in pieces if p.type in (CONTROL, UNKNOWN, USER_DEFINED)])

    def name(i: int) -> str | None:
        return pieces[i].piece if 0 <= i < len(pieces) else None

    bos, eos, pad = name(spec.bos_id), name(spec.eos_id), name(spec.pad_id)
    if bos is None or eos is None:
        raise UserError(f"{path}: the SentencePiece model has no BOS/EOS piece (bos_id={spec.bos_id}, eos_id={spec.eos_id})")
    hf.post_processor = bos_processor(bos, spec.bos_id)
    return hf, {"bos_token": bos, "eos_token": eos, "pad_token": pad, "unk_token": unk}


def bos_processor(bos: str, bos_id: int) -> processors.PostProcessor:
    """`encode(text, bos=True)` (HF: add_special_tokens=True) puts BOS first, as LLaMA does."""
    return processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
    )
