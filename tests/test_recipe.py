"""The recipe's levers: WSD schedule, Muon + AdamW, z-loss, document masking (against transformers)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from orizuru.model.checkpoint import model_config_to_hf
from orizuru.model.config import ModelConfig
from orizuru.model.llama import Llama
from orizuru.train.batches import doc_ids_from_bos
from orizuru.train.config import TrainConfig
from orizuru.train.loss import lm_loss
from orizuru.train.optim import MuonAdamW, configure_optimizer, lr_at


def tiny(**kw) -> Llama:
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, max_seq_len=32, **kw)
    cfg.validate()
    model = Llama(cfg)
    model.init_weights(seed=0)
    return model


def test_wsd_schedule_by_hand():
    t = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1, schedule="wsd", decay_frac=0.2)
    assert lr_at(0, t) == pytest.approx(1e-4)
    assert lr_at(9, t) == lr_at(50, t) == lr_at(87, t) == pytest.approx(1e-3)  # stable until step 88 = 110 - 22
    assert lr_at(88, t) == pytest.approx(1e-3 - 0.9e-3 / 22)
    assert lr_at(98, t) == pytest.approx(1e-3 - 0.9e-3 * 11 / 22)
    assert lr_at(109, t) == pytest.approx(1e-4)


def test_muon_groups_step_and_state_round_trip():
    model = tiny(tie_embeddings=True)
    t = TrainConfig(optimizer="muon", lr=1e-2)
    opt = configure_optimizer(model, t)
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert "model.layers.0.self_attn.q_proj.weight" in muon and "model.layers.1.mlp.down_proj.weight" in muon
    assert {"model.embed_tokens.weight", "model.norm.weight"} <= adamw and not muon & adamw
    assert len(muon) + len(adamw) == len(names)
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))

    def step(m, o):
        for g in o.param_groups:
            g["lr"] = 1e-2
        m(x[:, :-1], x[:, 1:]).backward()
        o.step()
        o.zero_grad()

    step(model, opt)
    # a copy restored from the state dict steps exactly as the original
    twin = tiny(tie_embeddings=True)
    twin.load_state_dict(model.state_dict())
    opt2 = configure_optimizer(twin, t)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as from a file: no shared tensors
    assert opt2.muon.state is opt2.state and opt2.adamw.state is opt2.state
    before = model.model.layers[0].self_attn.q_proj.weight.clone()
    step(model, opt)
    step(twin, opt2)
    assert not torch.equal(before, model.model.layers[0].self_attn.q_proj.weight)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_z_loss_by_hand_and_off_is_the_plain_loss():
    model = tiny()
    x = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(1))
    inp, tgt = x[:, :-1], x[:, 1:]
    assert torch.equal(lm_loss(model, inp, tgt, TrainConfig(), bos_id=1), model(inp, tgt, loss_reduction="sum"))
    logits = model(inp).float()
    want = F.cross_entropy(logits.view(-1, 64), tgt.reshape(-1)) + 1e-3 * torch.logsumexp(logits, -1).pow(2).mean()
    assert lm_loss(model, inp, tgt, TrainConfig(z_loss=1e-3), bos_id=1).item() / tgt.numel() == pytest.approx(want.item(), rel=1e-6)


def test_document_masking_matches_transformers_on_each_document_alone():
    model = tiny().eval()
    hf = LlamaForCausalLM(LlamaConfig(**model_config_to_hf(model.cfg), attn_implementation="eager")).eval()
    hf.load_state_dict(model.state_dict(), strict=False)
    bos = 1
    g = torch.Generator().manual_seed(2)
    docs = [torch.randint(3, 64, (n,), generator=g) for n in (5, 9, 4)]  # a window: tail of a document, then two
    packed = torch.cat([docs[0], torch.tensor([bos]), docs[1], torch.tensor([bos]), docs[2]])[None]
    doc_ids = doc_ids_from_bos(packed, bos)
    assert doc_ids.tolist() == [[0] * 5 + [1] * 10 + [2] * 5]
    with torch.no_grad():
        ours = model(packed, doc_ids=doc_ids)
        start = 0
        for d in doc_ids[0].unique_consecutive():
            n = int((doc_ids[0] == d).sum())
            alone = hf(input_ids=packed[:, start : start + n]).logits
            assert (ours[:, start : start + n] - alone).abs().max() < 1e-4
            start += n
        # without doc_ids the later documents see the earlier ones: the numbers differ
        assert (model(packed)[:, 5:] - ours[:, 5:]).abs().max() > 1e-3
    # the masked training loss goes through the same path
    t = TrainConfig(doc_mask=True)
    tgt = torch.roll(packed, -1, 1)
    assert lm_loss(model, packed, tgt, t, bos).item() / tgt.numel() == pytest.approx(
        F.cross_entropy(ours.view(-1, 64), tgt.reshape(-1)).item(), rel=1e-5)


def test_muon_wsd_pretrain_resumes_exactly(tmp_path, tiny_shards_dir):
    """The recipe through `orizuru pretrain`'s own checkpoints (torch.distributed.checkpoint state dicts)."""
    from conftest import tiny_overrides

    from orizuru.config import load_config
    from orizuru.files import read_jsonl
    from orizuru.train.config import PretrainConfig
    from orizuru.train.pretrain import pretrain

    recipe = {"train.optimizer": '"muon"', "train.schedule": '"wsd"', "train.z_loss": "1e-4", "train.doc_mask": "true",
              "train.ckpt_every": "4", "train.max_steps": "8"}
    full, cut = tmp_path / "full", tmp_path / "cut"
    pretrain(load_config(PretrainConfig, overrides=tiny_overrides(tiny_shards_dir, full, **recipe)))
    # a run stopped at step 4 (its 4 steps are all warm-up, so its schedule matches the full run's)
    pretrain(load_config(PretrainConfig, overrides=tiny_overrides(tiny_shards_dir, cut, **{**recipe, "train.max_steps": "4"})))
    pretrain(load_config(PretrainConfig, overrides=tiny_overrides(tiny_shards_dir, cut, **recipe)))  # resumes at step 4
    a, b = ({r["step"]: r["loss"] for r in read_jsonl(d / "metrics.jsonl")} for d in (full, cut))
    assert a == b and a[8] < a[1]
