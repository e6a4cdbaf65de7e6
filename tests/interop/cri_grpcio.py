#!/usr/bin/env python3
"""Drives a CRI server over its unix socket with gRPC C-core (grpcio), a gRPC
implementation podvisor did not write: Version, PullImage, RunPodSandbox,
CreateContainer, StartContainer, ExecSync and the teardown.

Prints one JSON object with what the server answered; a failed call exits 1
with the gRPC status on stderr. The CRI stubs are generated at run time from
the api.proto given (the k8s-cri crate ships it), so nothing generated is
kept in the repository.

--authority default     lets grpcio choose :authority for a unix: target
--authority socket-path  forces the socket path, as grpc-go sends it for a
                        bare-path target (kubelet and crictl up to 1.30)
"""

import argparse
import importlib
import json
import os
import sys
import tempfile


def stubs(proto):
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="cri-grpcio-")
    include = os.path.dirname(os.path.abspath(proto))
    wellknown = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{include}",
            f"-I{wellknown}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.basename(proto),
        ]
    )
    if rc != 0:
        sys.exit(f"protoc failed on {proto} ({rc})")
    sys.path.insert(0, out)
    module = os.path.splitext(os.path.basename(proto))[0]
    return importlib.import_module(f"{module}_pb2"), importlib.import_module(
        f"{module}_pb2_grpc"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--proto", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--authority", choices=["default", "socket-path"], required=True)
    args = parser.parse_args()

    import grpc

    pb, rpc = stubs(args.proto)
    options = []
    if args.authority == "socket-path":
        options.append(("grpc.default_authority", args.socket))
    channel = grpc.insecure_channel(f"unix://{args.socket}", options=options)
    runtime = rpc.RuntimeServiceStub(channel)
    images = rpc.ImageServiceStub(channel)
    deadline = 180
    result = {"grpcio": grpc.__version__}
    step = "Version"
    try:
        v = runtime.Version(pb.VersionRequest(), timeout=deadline)
        result["runtime_name"] = v.runtime_name
        result["runtime_api_version"] = v.runtime_api_version

        step = "PullImage"
        image = pb.ImageSpec(image=args.image)
        pulled = images.PullImage(pb.PullImageRequest(image=image), timeout=deadline)
        result["image_ref"] = pulled.image_ref

        step = "RunPodSandbox"
        pod_config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(
                name=args.name, uid=f"uid-{args.name}", namespace="default"
            ),
            hostname=args.name,
        )
        pod = runtime.RunPodSandbox(
            pb.RunPodSandboxRequest(config=pod_config), timeout=deadline
        ).pod_sandbox_id
        result["pod"] = pod

        step = "CreateContainer"
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="main"),
            image=image,
            command=["sleep", "3600"],
        )
        ctr = runtime.CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=pod, config=config, sandbox_config=pod_config
            ),
            timeout=deadline,
        ).container_id
        result["container"] = ctr

        step = "StartContainer"
        runtime.StartContainer(pb.StartContainerRequest(container_id=ctr), timeout=deadline)
        status = runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=ctr), timeout=deadline
        ).status
        result["state_after_start"] = pb.ContainerState.Name(status.state)

        step = "ExecSync"
        out = runtime.ExecSync(
            pb.ExecSyncRequest(
                container_id=ctr,
                cmd=["sh", "-c", "echo out-$(hostname); echo err >&2; exit 3"],
                timeout=60,
            ),
            timeout=deadline,
        )
        result["exec"] = {
            "stdout": out.stdout.decode(),
            "stderr": out.stderr.decode(),
            "exit_code": out.exit_code,
        }

        step = "StopContainer"
        runtime.StopContainer(pb.StopContainerRequest(container_id=ctr, timeout=2), timeout=deadline)
        step = "RemoveContainer"
        runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=ctr), timeout=deadline)
        step = "StopPodSandbox"
        runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=deadline)
        step = "RemovePodSandbox"
        runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=deadline)
        step = "ListPodSandbox"
        left = runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=deadline).items
        result["pods_left"] = [p.id for p in left]

        step = "unknown container"
        try:
            runtime.ContainerStatus(pb.ContainerStatusRequest(container_id="feedbeef"), timeout=deadline)
            result["unknown_container"] = "OK"
        except grpc.RpcError as e:
            result["unknown_container"] = e.code().name
    except grpc.RpcError as e:
        sys.stderr.write(f"{step}: {e.code().name}: {e.details()}\n")
        print(json.dumps(result))
        sys.exit(1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
