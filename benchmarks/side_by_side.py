"""The timing the side-by-side benchmarks share: training steps run in turn on the same batches (so load from
other processes hits each alike), one warm-up round, then the median step of each as images per second."""
import argparse
import statistics
import time

import torch


def parser(description, height, width, batch_size, steps):
    """The flags every side-by-side benchmark has, with its own default sizes; a script adds its own."""
    flags = argparse.ArgumentParser(description=description)
    flags.add_argument('--height', type=int, default=height)
    flags.add_argument('--width', type=int, default=width)
    flags.add_argument('--batch-size', type=int, default=batch_size)
    flags.add_argument('--steps', type=int, default=steps, help='timed steps of each, after one warm-up each')
    flags.add_argument('--threads', type=int, default=torch.get_num_threads(), help='torch intra-op threads')
    flags.add_argument('--batches', type=int, default=2, help='distinct batches, fed to each in turn')
    flags.add_argument('--seed', type=int, default=0)
    flags.add_argument('--device', default='cpu', help='cpu or cuda')
    return flags


def interleaved(steps, rounds, device, clock=time.perf_counter):
    """{name: seconds of each timed step}: `steps` is {name: (step, inputs)}; round i feeds each step its inputs[i
    % len(inputs)], in turn; round 0 warms up and is not timed. CUDA steps are timed to the GPU's end."""
    seconds = {name: [] for name in steps}
    for i in range(rounds + 1):
        for name, (step, inputs) in steps.items():
            start = clock()
            step(inputs[i % len(inputs)])
            if device.type == 'cuda':
                torch.cuda.synchronize()
            if i:
                seconds[name].append(clock() - start)
    return seconds


def speeds(seconds, batch_size, digits=2):
    """Print each step's times; return {name: images/s of its median step}."""
    for name, times in seconds.items():
        print(f'{name}: ' + ' '.join(f'{t:.{digits}f}' for t in times) + ' s/step')
    return {name: batch_size / statistics.median(times) for name, times in seconds.items()}


def project_step(loss_of, optimizer, scheduler):
    """The step pretrain.py's and finetune.py's loops take, as one function of a batch: its loss
    (`loss_of(batch)`), back-propagated; the parameters and the schedule move."""
    def step(batch):
        loss = loss_of(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return loss.detach()
    return step
