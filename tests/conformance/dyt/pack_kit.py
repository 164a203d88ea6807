"""Write golden.npz (compressed) from the DyT conformance kit's params.pt, params_init.pt,
train_step0.pt, logits.npz and meta.json: the same float32/uint8/bool values, in one small file.

    python tests/conformance/dyt/pack_kit.py /work/shared/conformance/dyt

Run once by hand (the tests never read the kit). Keys: `params/<name>`, `params_init/<name>`,
`grads/<name>`, `step/<key>` (train_step0.pt tensors), `eval/<key>` (logits.npz), `flops/<key>`,
`meta/<key>` (numbers from meta.json)."""
import json
import os
import sys

import numpy as np
import torch

LOGITS_KEYS = ("logits", "labels", "images", "token_logits", "token_select", "logits_real_skip_batched",
               "logits_real_skip_single", "logits_complete_model")
STEP_KEYS = ("labels", "student_logits", "teacher_logits", "student_token_select", "student_token_logits",
             "gumbel_exponentials", "dropout_keep")


def main(kit: str) -> None:
    out = {}
    for prefix, name in (("params", "params.pt"), ("params_init", "params_init.pt")):
        for k, v in torch.load(os.path.join(kit, name), weights_only=True).items():
            out[f"{prefix}/{k}"] = v.numpy()
    step = torch.load(os.path.join(kit, "train_step0.pt"), weights_only=True)
    for k in STEP_KEYS:
        out[f"step/{k}"] = step[k].numpy()
    for k, v in step["grads"].items():
        out[f"grads/{k}"] = v.numpy()
    out["step/images"] = np.asarray(step["images"])
    for k, v in step["stats"].items():
        out[f"step/stats/{k}"] = np.float64(v)
    with np.load(os.path.join(kit, "logits.npz")) as logits:
        for k in LOGITS_KEYS:
            out[f"eval/{k}"] = logits[k]
    meta = json.load(open(os.path.join(kit, "meta.json")))
    flops = meta["flops_reference"]
    out["flops/per_image_gflops"] = np.asarray(flops["per_image_gflops"], dtype=np.float64)
    out["flops/block_table"] = np.asarray(flops["block_gflops_by_kept_tokens_incl_cls"], dtype=np.float64)
    out["flops/base_gflops"] = np.float64(flops["base_gflops_without_blocks"])
    out["meta/input_sum_abssum"] = np.asarray(meta["eval"]["input_tensor_sum_abssum_per_image"], dtype=np.float64)
    out["meta/activation_rate_per_layer"] = np.asarray(meta["eval"]["activation_rate_per_layer"])
    out["meta/reference_acc1"] = np.float64(meta["eval"]["reference_metric_acc1"])
    np.savez_compressed(os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden.npz"), **out)


if __name__ == "__main__":
    main(sys.argv[1])
