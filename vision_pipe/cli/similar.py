"""``vision-pipe similar``: the images of a folder nearest to query images in a checkpoint's embedding."""

from __future__ import annotations

import argparse
from typing import Any

from vision_pipe.cli._common import add_checkpoint_source, expand_inputs, load_checkpoint


def register(sub: Any) -> None:
    p = sub.add_parser(
        "similar",
        help="find the images of a folder most similar to query images",
        description="Embed the images of --index FOLDER with a checkpoint's backbone (its last map, pooled; "
        "kept in FOLDER/.vision_pipe_index/, rebuilt when the folder changes) and print each query's k nearest; "
        "writes a contact sheet PNG per query and similar.json to --out.",
    )
    p.add_argument("--index", required=True, metavar="FOLDER", help="the folder of images to search (recursively)")
    p.add_argument("--query", required=True, nargs="+", metavar="IMAGE", help="query image file(s)")
    p.add_argument("-k", type=int, default=8, help="neighbours per query (default: 8)")
    p.add_argument("--metric", choices=["euclidean", "cosine"], default="euclidean", help="default: euclidean")
    p.add_argument("--index-dir", metavar="DIR", help="where the index is kept (default: FOLDER/.vision_pipe_index)")
    p.add_argument("--out", default="similar", metavar="DIR", help="output folder (default: similar)")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per forward (default: data.batch_size)")
    add_checkpoint_source(p)
    p.set_defaults(handler=_similar)


def _similar(args: argparse.Namespace) -> int:
    from vision_pipe.similar import find_similar

    pipe = load_checkpoint(args)
    queries = expand_inputs(args.query)
    index, results = find_similar(
        pipe,
        args.index,
        queries,
        k=args.k,
        metric=args.metric,
        index_dir=args.index_dir,
        out=args.out,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(f"index: {len(index.files)} image(s) of {index.root}, {index.status} ({index.embedded} embedded)")
    for result in results:
        print(f"\n{result.query}")
        for rank, (path, distance) in enumerate(zip(result.neighbours, result.distances, strict=True), 1):
            print(f"  {rank:>2}. {distance:10.4f}  {path}")
    print(f"\nwrote similar.json and {len(results)} contact sheet(s) to {args.out}/")
    return 0
