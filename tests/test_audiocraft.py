"""The audiocraft format against what audiocraft's loader builds: the text encoder it loads by name, the
attention layouts it loads, the xp.cfg fields that change the function without changing the weights.

The LM function is checked against an independent reference written here from audiocraft's model code
(LMModel.forward / StreamingTransformer / StreamingTransformerLayer with norm_first), reading audiocraft's
keys directly: no musiclit mapping and no transformers module is involved in it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from musiclit.__main__ import main as cli_main
from musiclit.infer.export import ExportError, export, import_audiocraft
from musiclit.model.audiocraft import AudiocraftFormatError, audiocraft_text_encoder, to_audiocraft, xp_config

PROJ = "condition_provider.conditioners.description.output_proj."


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny base whose text width (24) differs from the decoder's (32): it has a text projection."""
    from musiclit.model.musicgen import create_tiny_model_folder

    return create_tiny_model_folder(tmp_path_factory.mktemp("ac-base"), seed=0, text_dim=24)


@pytest.fixture(scope="module")
def lm(base_dir: Path) -> tuple[dict, dict]:
    """An audiocraft LM (best_state, xp.cfg) with random weights of the base's shapes, biases-free norms moved
    off 1/0 so that every weight matters."""
    from transformers import MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(base_dir)
    state = to_audiocraft(model.state_dict(), 32)
    gen = torch.Generator().manual_seed(7)
    best = {k: (v + 0.05 * torch.randn(v.shape, generator=gen)).contiguous() for k, v in state.items()}
    return best, xp_config(model.config, "t5-base")


def _write(folder: Path, best: dict, cfg: dict, codec: object = "facebook/encodec_32khz") -> Path:
    folder.mkdir(parents=True)
    torch.save({"best_state": best, "xp.cfg": cfg, "exported": True}, folder / "state_dict.bin")
    torch.save({"pretrained": codec} if isinstance(codec, str) else codec, folder / "compression_state_dict.bin")
    return folder


def reference_logits(best: dict, cfg: dict, codes: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """audiocraft's LM forward, (B, K, S, card) logits of delayed codes (B, K, S) given T5 states (B, Lt, Dt)
    (all text tokens real). Pre-norm layers: self-attention (causal), cross-attention, feed-forward."""
    lm = cfg["transformer_lm"]
    dim, heads, layers, n_q = lm["dim"], lm["num_heads"], lm["num_layers"], lm["n_q"]
    act = {"gelu": F.gelu, "relu": F.relu}[lm["activation"]]
    w = {k: v.double() for k, v in best.items()}

    def get(prefix: str, name: str) -> torch.Tensor:  # custom attention or torch's nn.MultiheadAttention (.mha.)
        return w[f"{prefix}.{name}"] if f"{prefix}.{name}" in w else w[f"{prefix}.mha.{name}"]

    def attention(prefix: str, x: torch.Tensor, source: torch.Tensor, causal: bool) -> torch.Tensor:
        wq, wk, wv = get(prefix, "in_proj_weight").chunk(3)
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(x @ wq.T), split(source @ wk.T), split(source @ wv.T)
        scores = (q / math.sqrt(q.shape[-1])) @ k.transpose(-1, -2)
        if causal:
            t = x.shape[1]
            scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        return out @ get(prefix, "out_proj.weight").T

    def norm(name: str, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (dim,), w[f"{name}.weight"], w[f"{name}.bias"], eps=1e-5)

    cond = text.double() @ w[PROJ + "weight"].T + w[PROJ + "bias"]
    x = sum(F.embedding(codes[:, k], w[f"emb.{k}.weight"]) for k in range(n_q))
    steps, half = codes.shape[-1], dim // 2
    phase = torch.arange(steps, dtype=torch.float64)[:, None] / (10000 ** (torch.arange(half) / (half - 1)))[None]
    x = x + torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)
    for i in range(layers):
        p = f"transformer.layers.{i}"
        x = x + attention(f"{p}.self_attn", norm(f"{p}.norm1", x), norm(f"{p}.norm1", x), causal=True)
        x = x + attention(f"{p}.cross_attention", norm(f"{p}.norm_cross", x), cond, causal=False)
        x = x + act(norm(f"{p}.norm2", x) @ w[f"{p}.linear1.weight"].T) @ w[f"{p}.linear2.weight"].T
    x = norm("out_norm", x)
    return torch.stack([x @ w[f"linears.{k}.weight"].T for k in range(n_q)], dim=1)


def imported_logits(folder: Path, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, K, S, card) of the imported transformers model, the T5 states it used)."""
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(folder).eval()
    tokens = AutoTokenizer.from_pretrained(folder)(["bright funk guitar with drums"], return_tensors="pt")
    with torch.no_grad():
        text = model.text_encoder(**tokens).last_hidden_state
        out = model.decoder(
            input_ids=codes.reshape(-1, codes.shape[-1]),
            encoder_hidden_states=model.enc_to_dec_proj(text),
            encoder_attention_mask=torch.ones(text.shape[:2], dtype=torch.long),
        ).logits
    return out.reshape(*codes.shape, -1), text


CODES = torch.randint(0, 2049, (1, 4, 12), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(
    ("activation", "memory_efficient"), [("gelu", True), ("relu", True), ("gelu", False), ("relu", False)]
)
def test_imported_model_computes_what_audiocraft_computes(lm, base_dir, tmp_path, activation, memory_efficient):
    """gelu/relu LMs and LMs trained with ``memory_efficient: false`` (attention in torch's
    nn.MultiheadAttention: keys under ``.mha.``) import into a model with audiocraft's logits."""
    best, cfg = lm
    cfg = {**cfg, "transformer_lm": {**cfg["transformer_lm"], "activation": activation}}
    if not memory_efficient:
        cfg["transformer_lm"].update(memory_efficient=False, custom=False)
        best = {k.replace(".self_attn.", ".self_attn.mha.").replace(".cross_attention.", ".cross_attention.mha.")
                if "_attn" in k or "cross_attention" in k else k: v for k, v in best.items()}  # fmt: skip
        assert any(".self_attn.mha.in_proj_weight" in k for k in best)
    out = import_audiocraft(_write(tmp_path / "ac", best, cfg), str(base_dir), tmp_path / "imported")
    logits, text = imported_logits(out, CODES)
    want = reference_logits(best, cfg, CODES, text)
    torch.testing.assert_close(logits.double(), want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        ("fuser.cross_attention_pos_emb", True, "fuser.cross_attention_pos_emb"),
        ("codebooks_pattern.delay.delays", [0, 2, 4, 6], r"codebooks_pattern\.delay\.delays"),
        ("codebooks_pattern.delay.delays", [0, 0, 0, 0], r"codebooks_pattern\.delay\.delays"),
        ("codebooks_pattern.delay.flatten_first", 1, "flatten_first"),
        ("transformer_lm.activation", "swiglu", "transformer_lm.activation"),
        ("transformer_lm.norm_first", False, "transformer_lm.norm_first"),
        ("transformer_lm.norm_first", None, r"transformer_lm\.norm_first.*absent"),
        ("transformer_lm.positional_embedding", "rope", "transformer_lm.positional_embedding"),
        ("transformer_lm.max_period", 5000, "transformer_lm.max_period"),
        ("transformer_lm.positional_scale", 0.5, "transformer_lm.positional_scale"),
        ("transformer_lm.causal", False, "transformer_lm.causal"),
        ("transformer_lm.past_context", 100, "transformer_lm.past_context"),
        ("transformer_lm.bias_proj", True, "transformer_lm.bias_proj"),
        ("transformer_lm.layer_scale", 1e-4, "transformer_lm.layer_scale"),
        ("fuser.prepend", ["description"], "fuser.prepend"),
        ("conditioners.description.t5.normalize_text", True, "normalize_text"),
        ("conditioners.description.t5.name", "google/flan-t5-base", None),  # a tiny base: its width decides
        ("interleave_stereo_codebooks.use", True, None),  # only read for stereo
    ],
)
def test_import_refuses_what_transformers_cannot_express(lm, base_dir, tmp_path, path, value, match):
    """Each field that changes the function without changing the weights: refused, naming the field (None
    in the table: accepted, the field does not change this model)."""
    best, cfg = lm
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
    cfg["codebooks_pattern"] = {**cfg["codebooks_pattern"], "delay": dict(cfg["codebooks_pattern"]["delay"])}
    cfg["conditioners"] = {"description": {"model": "t5", "t5": dict(cfg["conditioners"]["description"]["t5"])}}
    node, *rest = path.split(".")
    target = cfg.setdefault(node, {})
    for part in rest[:-1]:
        target = target.setdefault(part, {})
    if value is None:
        target.pop(rest[-1], None)  # absent: audiocraft uses its class default
    else:
        target[rest[-1]] = value
    folder = _write(tmp_path / "ac", best, cfg)
    if match is None:
        import_audiocraft(folder, str(base_dir), tmp_path / "imported")
        return
    with pytest.raises(ExportError, match=match):
        import_audiocraft(folder, str(base_dir), tmp_path / "imported")
    assert not (tmp_path / "imported").exists()


def test_import_refuses_another_codec_and_another_text_encoder(lm, base_dir, tmp_path):
    best, cfg = lm
    with pytest.raises(ExportError, match="not facebook/encodec_32khz"):
        import_audiocraft(
            _write(tmp_path / "a", best, cfg, codec="facebook/encodec_24khz"), str(base_dir), tmp_path / "o"
        )
    # onto a base whose text encoder audiocraft knows, the LM's conditioner must be that one
    from transformers import T5Config

    from musiclit.model.audiocraft import decoder_config
    from musiclit.model.musicgen import T5_BASE

    t5_base = T5Config(**T5_BASE, _name_or_path="t5-base")
    flan = {**cfg, "conditioners": {"description": {"model": "t5", "t5": {"name": "google/flan-t5-base"}}}}
    with pytest.raises(AudiocraftFormatError, match=r"t5\.name.*the base's text encoder is t5-base"):
        decoder_config(flan, t5_base)
    assert decoder_config(cfg, t5_base)["hidden_size"] == 32


def test_audiocraft_knows_the_text_encoder_by_name_and_architecture():
    from transformers import T5Config

    from musiclit.model.musicgen import T5_BASE

    assert audiocraft_text_encoder(T5Config(**T5_BASE, _name_or_path="t5-base")) == "t5-base"
    assert audiocraft_text_encoder(T5Config(**T5_BASE, _name_or_path="google-t5/t5-base")) == "t5-base"
    flan = T5Config(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12, feed_forward_proj="gated-gelu",
                    _name_or_path="google/flan-t5-base")  # fmt: skip
    assert audiocraft_text_encoder(flan) == "google/flan-t5-base"
    refused = [
        (T5Config(d_model=24, num_layers=2, num_heads=4), "unnamed, width 24"),
        (T5Config(d_model=24, num_layers=2, num_heads=4, _name_or_path="t5-base"), "size mismatch"),
        (T5Config(**{**T5_BASE, "num_layers": 6}, _name_or_path="t5-base"), "another function"),
        (T5Config(**T5_BASE, _name_or_path="/models/my-t5"), "'/models/my-t5'"),
        (T5Config(d_model=2048, num_layers=24, num_heads=32, _name_or_path="google/flan-t5-xl"), "flan-t5-xl"),
    ]
    for config, match in refused:
        with pytest.raises(AudiocraftFormatError, match=match):
            audiocraft_text_encoder(config)


def test_export_refuses_a_text_encoder_audiocraft_cannot_load(base_dir, tmp_path, capsys):
    """The tiny base's text encoder (24 wide, unnamed): audiocraft would build t5-base's Linear(768, 32)
    and fail to load. Refused before anything is written; the CLI does not say "load it with audiocraft"."""
    with pytest.raises(ExportError, match="not one audiocraft can load"):
        export(str(base_dir), "audiocraft", tmp_path / "ac")
    assert not (tmp_path / "ac").exists()
    assert cli_main(["export", str(base_dir), "--format", "audiocraft", "--out", str(tmp_path / "ac")]) == 2
    captured = capsys.readouterr()
    assert "load it with audiocraft" not in captured.out and "not one audiocraft can load" in captured.err
    assert not (tmp_path / "ac").exists()


def test_melody_configs_are_checked_as_melody():
    """MusicGen-melody's layout (chroma and text prepended, no cross-attention) is accepted; its chroma settings
    and a text model's fields in a melody layout (or the reverse) are refused, naming the field."""
    from transformers import MusicgenMelodyConfig

    from musiclit.model.audiocraft import decoder_config
    from musiclit.model.musicgen import tiny_config_dict

    cfg = xp_config(MusicgenMelodyConfig.from_dict(tiny_config_dict(melody=True)), "t5-base")
    assert decoder_config(cfg)["hidden_size"] == 32
    for path, value, match in [
        ("conditioners.self_wav.chroma_stem.argmax", False, r"chroma_stem\.argmax"),
        ("conditioners.self_wav.chroma_stem.radix2_exp", 12, r"chroma_stem\.radix2_exp"),
        ("fuser.prepend", ["description", "self_wav"], r"fuser\.prepend.*prepends the chroma, then the text"),
        ("fuser.cross", ["description"], r"fuser\.cross"),
    ]:
        bad = {**cfg, "fuser": dict(cfg["fuser"]), "conditioners": {k: dict(v) for k, v in cfg["conditioners"].items()}}
        bad["conditioners"]["self_wav"]["chroma_stem"] = dict(cfg["conditioners"]["self_wav"]["chroma_stem"])
        node, *rest = path.split(".")
        target = bad[node]
        for part in rest[:-1]:
            target = target[part]
        target[rest[-1]] = value
        with pytest.raises(AudiocraftFormatError, match=match):
            decoder_config(bad)
