"""SimCLR on mnist1d with DistributedDataParallel and contrastlab's NT-Xent with candidates gathered across ranks.

    torchrun --standalone --nproc_per_node 2 examples/ddp_simclr.py --steps 50        # CPU, gloo
    torchrun --standalone --nproc_per_node 8 examples/ddp_simclr.py --device cuda     # GPUs, NCCL

Every global batch of --batch-size indices is split across ranks (the last rank may get fewer rows); each rank
contrasts its rows against the gathered rows of all ranks ("local loss"), and trains on world_size × its share so
that DDP's gradient averaging yields the gradient of the global loss.
"""
import argparse, os, time
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from contrastlab.core import seed_everything
from contrastlab.data import make_mnist1d, Augment1D, TwoViews, BatchSampler
from contrastlab.nets import Conv1dEncoder, ProjectedEncoder
from contrastlab.losses import info_nce_loss
from contrastlab.distributed import world

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100); ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.2); ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--device", default="cpu"); ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    use_cuda = a.device.startswith("cuda")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, ws = world()
    dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
    if use_cuda: torch.cuda.set_device(dev)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ws))
    seed_everything(a.seed)                                   # identical initial weights on every rank
    data = make_mnist1d(4000)["x"].to(dev)
    model = DDP(ProjectedEncoder(Conv1dEncoder()).to(dev), device_ids=[dev.index] if use_cuda else None)
    opt = torch.optim.Adam(model.parameters(), a.lr)
    views, sampler = TwoViews(Augment1D()), BatchSampler(len(data), a.batch_size, seed=a.seed)
    torch.manual_seed(a.seed + 1000 * rank)                   # different augmentation noise per rank
    step, epoch, t0 = 0, 0, time.time()
    while step < a.steps:
        sampler.set_epoch(epoch)
        for idx in sampler:
            mine = idx.tensor_split(ws)[rank]                 # this rank's slice of the global batch
            v1, v2 = views(data[mine.to(dev)])
            share = info_nce_loss(model(v1), model(v2), a.temperature, gather_distributed=True)
            opt.zero_grad(); (ws * share).backward(); opt.step()
            total = share.detach().clone(); dist.all_reduce(total)
            step += 1
            if rank == 0 and (step % 10 == 0 or step == a.steps):
                print(f"step {step}/{a.steps}  global loss {total.item():.4f}  ({time.time() - t0:.1f}s, {ws} ranks)", flush=True)
            if step >= a.steps: break
        epoch += 1
    # Shut down in order: every rank past its last collective, DDP's reducer (it holds gloo work objects) freed, then the group.
    # Without this, gloo's worker threads can still own tensors at interpreter exit and abort the process after training ends.
    dist.barrier(); del model, opt
    dist.destroy_process_group()

if __name__ == "__main__":
    main()
