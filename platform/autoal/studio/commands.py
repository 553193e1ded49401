"""`autoal serve`, for `autoal.cli`: it imports Ray Serve only when it runs."""
from __future__ import annotations

from autoal.errors import AutoALError


def _serve(args) -> None:
    from autoal.studio.client import StudioClient, api_key
    from autoal.studio.serve import run

    if args.connect is not None and args.label_studio is None:
        raise AutoALError("--connect PROJECT_ID needs --label-studio URL: where the Label Studio server is")
    studio = None if args.label_studio is None else StudioClient(args.label_studio, api_key(args.api_key_file),
                                                                 args.connect)
    run(args.dir, args.host, args.port, args.retrain_every, studio, log=lambda line: print(line, flush=True),
        gpus=args.gpus)


def add_parser(sub) -> None:
    """`autoal serve PROJECT`: the project as Label Studio's ML backend."""
    srv = sub.add_parser("serve", help="serve a labeling project as a Label Studio ML backend (Ray Serve)")
    srv.add_argument("dir", help="a project made by `autoal label init`")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    srv.add_argument("--port", type=int, default=9090)
    srv.add_argument("--retrain-every", type=int, default=10, metavar="N", help="train a new round after N answers")
    srv.add_argument("--label-studio", metavar="URL", help="the Label Studio server, e.g. http://localhost:8080: "
                     "task images not in the project's folder are fetched from it with the API key")
    srv.add_argument("--connect", type=int, metavar="PROJECT_ID",
                     help="add this backend and its webhook to that Label Studio project through its API")
    srv.add_argument("--api-key-file", help="Label Studio's API key (default: $LABEL_STUDIO_API_KEY)")
    srv.add_argument("--gpus", type=float, default=0.0, help="GPUs for the backend's replica, which predicts "
                     "fetched images (rounds train on the project config's gpus)")
    srv.set_defaults(func=_serve)
