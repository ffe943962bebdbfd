"""The analysis bank holds one set of weights whatever the menu size: its quantized copies share the FP tensors."""

from __future__ import annotations

from brevitas_ldm.denoiser.loading import load_pipeline
from brevitas_ldm.denoiser.sampling import SamplingSpec, get_denoiser
from brevitas_ldm.denoiser.trajectory import fp_reference, measure
from brevitas_ldm.quant.precision_bank import PrecisionBank
from brevitas_ldm.recipe import get_recipe


def test_bank_copies_share_the_fp_weights_and_measure_as_before(sd_dir):
    pipe = load_pipeline(str(sd_dir))
    denoiser = get_denoiser(pipe)
    fp_storage = {p.data_ptr() for p in denoiser.parameters()}
    before = {name: p.detach().clone() for name, p in denoiser.named_parameters()}
    recipe = get_recipe("sqnr-hybrid-w8a8")
    spec = SamplingSpec(3, 2.0, 2)
    prompts, seeds = ["a photo", "a cat"], [1, 2]
    bank = PrecisionBank(pipe, recipe, prompts, seeds, spec).ensure(["w8a8", "w4a8", "w8a16"])
    assert len(bank.layers) == 3
    for layers in bank.layers.values():
        for name, layer in layers.items():
            assert layer.weight.data_ptr() in fp_storage, name
            assert layer.weight.data_ptr() == bank.fp_layers[name].weight.data_ptr()
    # Sharing must not change a single FP weight, nor what a configuration measures.
    reference = fp_reference(pipe, prompts, seeds, spec)
    w4 = {name: "w4a8" for name in bank.layers[next(iter(bank.layers))]}
    shared_db = measure(pipe, reference, bank, bank.layer_precisions(w4)).final_db
    assert all((p == before[name]).all() for name, p in denoiser.named_parameters())
    fresh = PrecisionBank(load_pipeline(str(sd_dir)), recipe, prompts, seeds, spec).ensure(["w4a8"])
    assert measure(fresh.pipe, fp_reference(fresh.pipe, prompts, seeds, spec), fresh,
                   fresh.layer_precisions(w4)).final_db == shared_db
