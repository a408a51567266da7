"""Reference DINO training step, written from the paper (Caron et al. 2021, Algorithm 1, the
multi-crop loss of §3.1 and the head of the appendix), for the Rust parity test
`dino_parity.rs`.

Usage: dino_reference.py OUT_DIR [SEED] [MUTATION]

MUTATION (for checking that the parity test can fail; never used by the plain test):
`student_centering` (the centre is subtracted from the student's outputs instead of the
teacher's), `no_sharpening` (the teacher's temperature is the student's 0.1), `same_view_pairs`
(the pairs i == j are not skipped).

The step: epoch 1 of 4 with a teacher-temperature warm-up of 3 epochs (0.04 -> 0.07, so 0.055),
the last layer frozen only in epoch 0 (so trained here), student temperature 0.1, centre
momentum 0.9, the teacher update after optimizer step 5 of 10 (momentum on the cosine from
0.996 to 1). Views: 2 global [8, 3, 32, 32] and 2 local [8, 3, 16, 16].

Writes to OUT_DIR, with tensor names in ssl-host's scheme (`student.encoder.conv1.weight`,
`student.head.mlp.0.weight`, `student.head.last_layer.weight_v`, `teacher.encoder.bn1.running_mean`,
`dino.center`):
- initial.safetensors: every student/teacher tensor and BatchNorm running statistic, the centre;
- views.safetensors: `g1`, `g2`, `l1`, `l2`;
- expected.safetensors: `loss`; `grad.<student name>`; `after_forward.<buffer>`;
  `after_step.<student name>` after one Adam step (no decay on names with bias/bn/norm/
  downsample.1); `after_momentum.<teacher name>` after the momentum update; `after.dino.center`.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from parity_common import (
    BATCH,
    adam,
    copies,
    paired_parameters,
    perturb,
    prefixed,
    resnet18_trunk,
    save,
    start,
    step,
    tensors_of,
)

HIDDEN, BOTTLENECK, OUT = 128, 32, 256
STUDENT_TEMP = 0.1
EPOCH, WARMUP_EPOCHS = 1, 3
WARMUP_TEACHER_TEMP, TEACHER_TEMP = 0.04, 0.07
CENTER_MOMENTUM = 0.9
BASE_MOMENTUM, STEP, MAX_STEPS = 0.996, 5, 10
MUTATIONS = ("student_centering", "no_sharpening", "same_view_pairs")


class Head(nn.Module):
    """MLP in -> hidden -> hidden -> bottleneck (GELU between), L2-normalisation, then the
    weight-normalised last layer W = g v / |v| (rows), no bias."""

    def __init__(self, in_dim):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, HIDDEN), nn.GELU(),
            nn.Linear(HIDDEN, HIDDEN), nn.GELU(),
            nn.Linear(HIDDEN, BOTTLENECK),
        )
        self.last_layer = nn.Module()
        v = nn.Linear(BOTTLENECK, OUT, bias=False).weight.detach().clone()
        self.last_layer.weight_v = nn.Parameter(v)
        self.last_layer.weight_g = nn.Parameter(torch.ones(OUT, 1))

    def forward(self, x):
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        v, g = self.last_layer.weight_v, self.last_layer.weight_g
        w = g * v / v.norm(dim=1, keepdim=True)
        return x @ w.t()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = resnet18_trunk()
        self.head = Head(512)

    def forward(self, crops):
        """Crops of one size go through the encoder together; the head takes all."""
        groups, start = [], 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape == crops[start].shape:
                end += 1
            groups.append(self.encoder(torch.cat(crops[start:end])))
            start = end
        return self.head(torch.cat(groups))


def main():
    out_dir, mutation, gen = start(MUTATIONS)
    student_name, teacher_name = prefixed("student."), prefixed("teacher.")

    student = Net()
    perturb(student, gen, 0.0, min_std=0.02)
    with torch.no_grad():
        # Biases away from 0 so that a swapped bias cannot go unnoticed.
        for m in student.head.mlp:
            if isinstance(m, nn.Linear):
                m.bias.copy_(0.02 * torch.randn(m.bias.shape, generator=gen))
    teacher = copy.deepcopy(student)
    perturb(teacher, gen, 0.1, min_std=0.02)
    student.head.last_layer.weight_g.requires_grad = False  # norm_last_layer
    for p in teacher.parameters():
        p.requires_grad = False
    student.train()
    teacher.train()
    center = 0.05 * torch.randn(1, OUT, generator=gen)

    g1, g2 = (torch.rand(BATCH, 3, 32, 32, generator=gen) for _ in range(2))
    l1, l2 = (torch.rand(BATCH, 3, 16, 16, generator=gen) for _ in range(2))

    initial = tensors_of(student, student_name)
    initial.update(tensors_of(teacher, teacher_name))
    initial["dino.center"] = center.clone()
    save(out_dir, "initial.safetensors", initial)
    save(out_dir, "views.safetensors", {"g1": g1, "g2": g2, "l1": l1, "l2": l2})

    # Teacher temperature of this epoch: linspace(0.04, 0.07, WARMUP_EPOCHS)[EPOCH].
    temp = WARMUP_TEACHER_TEMP + (TEACHER_TEMP - WARMUP_TEACHER_TEMP) * EPOCH / (WARMUP_EPOCHS - 1)
    if mutation == "no_sharpening":
        temp = STUDENT_TEMP

    with torch.no_grad():
        t_out = teacher([g1, g2])
    s_out = student([g1, g2, l1, l2])
    s_logits = s_out - center if mutation == "student_centering" else s_out
    t_logits = t_out if mutation == "student_centering" else t_out - center
    q = F.softmax(t_logits / temp, dim=-1).chunk(2)
    log_p = F.log_softmax(s_logits / STUDENT_TEMP, dim=-1).chunk(4)
    total, terms = 0.0, 0
    for i in range(2):
        for j in range(4):
            if i == j and mutation != "same_view_pairs":
                continue
            total = total + torch.sum(-q[i] * log_p[j], dim=-1).mean()
            terms += 1
    loss = total / terms

    optimizer, _ = adam(student.named_parameters())
    expected = step(loss, optimizer, student, student_name)
    expected.update(copies(teacher.named_buffers(), "after_forward.", teacher_name))
    # Teacher: m on the cosine from BASE_MOMENTUM (iteration STEP - 1 of MAX_STEPS) to 1.
    m = 1 - (1 - BASE_MOMENTUM) * (math.cos(math.pi * (STEP - 1) / MAX_STEPS) + 1) / 2
    with torch.no_grad():
        for t, s in paired_parameters(teacher, student):
            t.mul_(m).add_((1 - m) * s.detach())
        center = center * CENTER_MOMENTUM + t_out.mean(dim=0, keepdim=True) * (1 - CENTER_MOMENTUM)
    expected.update(copies(teacher.named_parameters(), "after_momentum.", teacher_name))
    expected["after.dino.center"] = center.clone()

    save(out_dir, "expected.safetensors", expected)
    print(
        f"reference DINO step: loss {loss.item():.8f}, teacher temperature {temp}, momentum {m:.6f}, "
        f"{len(initial)} initial tensors" + (f" (MUTATION {mutation})" if mutation else "")
    )


if __name__ == "__main__":
    main()
