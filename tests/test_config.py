"""Config models: frozen, strict, and keys stable across processes."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from pydantic import ValidationError
from tiny import tiny_run_config

from dct.config import EvaluationConfig, PromptConfig, TrainingConfig, eval_key, token_key


def test_frozen_and_extra_forbidden():
    config = tiny_run_config()
    with pytest.raises(ValidationError):
        config.training.max_epochs = 3
    with pytest.raises(ValidationError, match="extra"):
        TrainingConfig(max_epoch=3)  # typo of max_epochs


def test_keys_stable_across_processes():
    code = (
        "import sys; sys.path.insert(0, 'tests'); from tiny import tiny_run_config; "
        "from dct.config import token_key, eval_key; c = tiny_run_config(); t = token_key(c, 'r1', 'r2'); "
        "print(t, eval_key(c, t, None))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
        ).stdout
        for seed in (1, 2)
    }
    c = tiny_run_config()
    t = token_key(c, "r1", "r2")
    assert outs == {f"{t} {eval_key(c, t, None)}\n"}


def test_what_changes_which_key():
    c = tiny_run_config()
    t = token_key(c, "r1", "r2")
    # micro-batching does not change the result, so it does not change the key
    assert token_key(tiny_run_config(micro_batch_size=1), "r1", "r2") == t
    assert token_key(tiny_run_config(max_epochs=7), "r1", "r2") != t
    assert token_key(c, "r1-other-revision", "r2") != t
    # restart settings count only when restarts are on (restarts=0 keeps the keys of tokens learned before them)
    assert token_key(tiny_run_config(restart_below=0.9), "r1", "r2") == t
    assert token_key(tiny_run_config(restarts=1), "r1", "r2") != t
    assert token_key(tiny_run_config(restarts=1, restart_below=0.9), "r1", "r2") != token_key(
        tiny_run_config(restarts=1), "r1", "r2"
    )
    # num_vectors enters the key only when it is not 1 (one-vector keys are those from before it existed)
    one = c.model_copy(update={"token": c.token.model_copy(update={"num_vectors": 1})})
    three = c.model_copy(update={"token": c.token.model_copy(update={"num_vectors": 3})})
    assert token_key(one, "r1", "r2") == t
    assert token_key(three, "r1", "r2") != t
    # seed_schedule enters the key only when it is "fresh" ("fixed" keys are those from before it existed)
    assert token_key(tiny_run_config(seed_schedule="fixed"), "r1", "r2") == t
    assert token_key(tiny_run_config(seed_schedule="fresh"), "r1", "r2") != t
    # evaluation settings change only the eval_key
    c2 = c.model_copy(update={"evaluation": EvaluationConfig(num_samples=8, seed=1000)})
    assert token_key(c2, "r1", "r2") == t
    assert eval_key(c2, t, None) != eval_key(c, t, None)
    # nearest_k changes only numbers computed from the stored features: samples and records stay valid
    c3 = c.model_copy(update={"evaluation": c.evaluation.model_copy(update={"nearest_k": 3})})
    assert eval_key(c3, t, None) == eval_key(c, t, None)


def test_bad_values_name_the_value():
    with pytest.raises(ValidationError, match="overlap the optimisation seeds"):
        tiny_run_config(seed=1000)
    # a restart's seed block (3 images from seed 997: 1000-1002) may not reach the evaluation seeds either
    tiny_run_config(seed=994, restarts=1)
    with pytest.raises(ValidationError, match=r"evaluation seeds 1000..1003 overlap the optimisation seeds 994..1002"):
        tiny_run_config(seed=994, restarts=2)
    with pytest.raises(ValidationError, match=r"'A photo of' must contain exactly one"):
        PromptConfig(templates=("A photo of",))
    with pytest.raises(ValidationError, match="grad_steps=9"):
        tiny_run_config(grad_steps=9)


def test_import_dct_does_not_import_prefect():
    modules = "dct, dct.method.optimize, dct.method.sampling, dct.method.tokens, dct.config, dct.cli"
    code = f"import sys, {modules}; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# Today's keys: a change to key derivation (or to a dataset's defaults) must be a deliberate act that updates
# this table and says why (docs/design.md, "Names and keys"). Fixed stand-in revisions keep the table
# independent of the hub; the toy's pipeline is a local directory, so its stand-in is a content hash. inet/cub/
# inat were recomputed when their presets took grad_steps=2 (token_key), the article-aware baseline prompt
# (eval_key) and, for inat, a held-out evaluator (eval_key); the toy's when a local directory stopped entering
# keys by its path (model_identity).
STAND_IN_REVISIONS = {
    "toy": ("sha256:" + "d" * 40, "classifier-rev-4567", "evaluator-rev-89ab"),
    "inet": ("diffusion-rev-0123", "classifier-rev-4567", "evaluator-rev-89ab"),
    "cub": ("diffusion-rev-0123", "classifier-rev-4567", "evaluator-rev-89ab"),
    "inat": ("diffusion-rev-0123", "classifier-rev-4567", "evaluator-rev-89ab"),
}
PINNED_KEYS = {
    "toy": ("43375cc99a18001d", "d5182607c7871b0f"),
    "inet": ("f4f19d1c415c8ed4", "8e7e695b62c872bc"),
    "cub": ("e0ad633c57c6627a", "95f01a8b50f7647c"),
    "inat": ("e750e5f888b041f6", "7369d2d50921ee59"),
}


def _keys(spec, diffusion_revision, classifier_revision, evaluator_revision):
    config = spec.run_config()
    tkey = token_key(config, diffusion_revision, classifier_revision)
    return tkey, eval_key(config, tkey, evaluator_revision if config.evaluation.evaluator else None)


@pytest.mark.parametrize("name", sorted(PINNED_KEYS))
def test_keys_of_the_builtin_datasets_are_pinned(name):
    from dct.models.datasets import _inat_with_names, get_dataset

    # inat's names come from a model config that is not cached offline; the keys do not depend on them.
    spec = _inat_with_names(tuple(f"species {i}" for i in range(10_000))) if name == "inat" else get_dataset(name)
    assert _keys(spec, *STAND_IN_REVISIONS[name]) == PINNED_KEYS[name]


def test_keys_of_the_shipped_toy_world_are_pinned():
    """With the real revisions of the shipped toy weights, wherever the checkout is."""
    from dct.models.datasets import get_dataset
    from dct.run.plan import resolve_revisions

    config = get_dataset("toy").run_config()
    r = resolve_revisions(config)
    tkey = token_key(config, r.diffusion, r.classifier)
    assert (tkey, eval_key(config, tkey, r.evaluator)) == ("340a575bbda71334", "afa63defa0465723")


def test_a_local_directory_enters_keys_by_content_not_path(tmp_path):
    """Two clones (or a parent and a worker with another code directory) get the same keys for the same files."""
    from dct.models.datasets import get_dataset

    spec = get_dataset("toy")
    moved = spec.model_copy(update={"diffusion": spec.diffusion.model_copy(update={"model_id": str(tmp_path)})})
    revisions = STAND_IN_REVISIONS["toy"]
    assert _keys(moved, *revisions) == _keys(spec, *revisions)
    # ...while a hub model's id still counts: another id at the same revision is another model.
    other = spec.model_copy(update={"diffusion": spec.diffusion.model_copy(update={"model_id": "org/other"})})
    hub = ("diffusion-rev-0123", *revisions[1:])
    assert _keys(other, *hub) != _keys(spec, *hub)


def _registered_specs():
    from dct.models.datasets import DATASETS, _inat_with_names, get_dataset

    for name in sorted(DATASETS):  # inat's names need a cached model config; the prompts do not depend on them
        yield _inat_with_names(("Anas platyrhynchos",)) if name == "inat" else get_dataset(name)


ARTICLES = {"a", "an", "the"}


@pytest.mark.parametrize("spec", list(_registered_specs()), ids=lambda s: s.name)
def test_baseline_prompt_is_the_dct_prompt_without_the_token_for_every_template(spec):
    from dct.config import baseline_prompts, epoch_prompts

    config = spec.run_config()
    templates, word = config.prompts.templates, config.prompts.baseline_word
    name, token = spec.class_names[0], config.token_string(0)
    n = len(templates)
    pairs = zip(baseline_prompts(templates, word, name, n), epoch_prompts(templates, token, name, n), strict=True)
    for base, dct in pairs:
        words = base.split()
        assert base == " ".join(words) and base.endswith(f" {name}"), base
        lowered = [w.lower() for w in words]
        assert not any(a in ARTICLES and b in ARTICLES for a, b in itertools.pairwise(lowered)), base
        # Same words as the DCT prompt, with the token either replaced by the baseline word or removed.
        without_token = dct.replace(token, "").split()
        assert words in (without_token, dct.replace(token, word).split()), (base, dct)


def test_baseline_fills_the_slot_or_drops_it_after_an_article():
    from dct.config import REFERENCE_TEMPLATES, baseline_prompts, fill_baseline

    assert baseline_prompts(REFERENCE_TEMPLATES, "a", "tench", 3) == [
        "A photo of a tench",
        "a high resolution realistic image of a tench",
        "A close-up photo of a tench",
    ]
    assert fill_baseline("{} photo of", "", "tench") == "photo of tench"
    assert fill_baseline("A photo of {}", "", "tench") == "A photo of tench"


def test_the_toy_baseline_and_keys_are_what_they_were():
    """The toy's templates have no article before the slot: its baseline prompts are the word-filled ones, so
    its eval_key (which hashes the baseline only when it differs from that) and stored samples stay valid."""
    from dct.config import baseline_differs_from_word, baseline_prompts, epoch_prompts
    from dct.models.datasets import get_dataset

    config = get_dataset("toy").run_config()
    t, w = config.prompts.templates, config.prompts.baseline_word
    assert baseline_prompts(t, w, "ember finch", 3) == epoch_prompts(t, w, "ember finch", 3)
    assert not baseline_differs_from_word(config.prompts)
    assert baseline_differs_from_word(get_dataset("inet").run_config().prompts)


def test_keys_do_not_depend_on_where_a_local_model_lies(tmp_path):
    """The same weights at two paths (two clones, a worker's DCT_CODE_DIR, a moved folder) give the same keys;
    other weights give other keys (the revision, a content hash, carries the difference)."""
    from tiny import tiny_run_config

    base = tiny_run_config()
    here, there = (
        base.model_copy(
            update={
                "diffusion": base.diffusion.model_copy(update={"model_id": f"{root}/pipeline"}),
                "classifier": base.classifier.model_copy(update={"model_id": f"{root}/guide", "kind": "local"}),
            }
        )
        for root in (tmp_path / "clone-a", "/srv/elsewhere/clone-b")
    )
    assert token_key(here, "sha256:same", "sha256:guide") == token_key(there, "sha256:same", "sha256:guide")
    assert token_key(here, "sha256:same", "sha256:guide") != token_key(here, "sha256:other", "sha256:guide")
    assert token_key(here, "sha256:same", "sha256:guide") != token_key(base, "sha256:same", "sha256:guide")


def test_fresh_seeds_are_one_block_per_epoch_and_stay_clear_of_the_evaluation_seeds():
    """'fresh': epoch e of attempt a renders seeds seed + (a * max_epochs + e) * images_per_epoch + i; every one is
    in all_seeds, which the evaluation seeds (and a synthesis seed block) must miss."""
    from dct.synthesis.config import SynthesisConfig, check_synthesis

    fixed, fresh = (tiny_run_config(seed=10, restarts=1, seed_schedule=s).training for s in ("fixed", "fresh"))
    assert fixed.epoch_seeds(0, 0) == fixed.epoch_seeds(0, 5) == (10, 11, 12)
    assert fixed.epoch_seeds(1, 3) == (13, 14, 15) and fixed.all_seeds == tuple(range(10, 16))
    assert [fresh.epoch_seeds(0, e) for e in (0, 1, 5)] == [(10, 11, 12), (13, 14, 15), (25, 26, 27)]
    assert fresh.epoch_seeds(1, 0) == (28, 29, 30)  # the restart starts after the first attempt's 6 epochs
    used = {s for a in (0, 1) for e in range(6) for s in fresh.epoch_seeds(a, e)}
    assert used == set(fresh.all_seeds) == set(range(10, 46))
    with pytest.raises(ValidationError, match="overlap the optimisation seeds"):
        tiny_run_config(seed_schedule="fresh", max_epochs=400)  # 1200 seeds reach evaluation.seed=1000
    check_synthesis(SynthesisConfig(per_class=2, seed=20), tiny_run_config(seed=10, seed_schedule="fixed"))
    with pytest.raises(ValueError, match="overlap the optimisation seeds"):
        check_synthesis(SynthesisConfig(per_class=2, seed=20), tiny_run_config(seed=10, seed_schedule="fresh"))
