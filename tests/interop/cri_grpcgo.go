// Command cri_grpcgo calls one CRI method over a unix socket with grpc-go,
// dialling the way the CRI client of kubelet and crictl up to 1.30 does: the
// bare socket path as the target, a context dialer that ignores it, so
// grpc-go sends that path as the HTTP/2 :authority.
//
// The request is given as protobuf bytes (hex) and the response is printed
// as protobuf bytes (hex), so no generated CRI code is needed: the caller
// encodes and decodes. A failed call prints "code: message" on stderr and
// exits 1.
//
//	cri_grpcgo SOCKET /runtime.v1.RuntimeService/Version HEX_REQUEST
package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// rawCodec passes protobuf bytes through untouched.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: cri_grpcgo SOCKET METHOD HEX_REQUEST")
		os.Exit(2)
	}
	socket, method := os.Args[1], os.Args[2]
	request, err := hex.DecodeString(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, "request is not hex:", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dial := func(ctx context.Context, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}
	conn, err := grpc.DialContext(ctx, socket, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithContextDialer(dial), grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		fmt.Fprintln(os.Stderr, "Unavailable: dial:", err)
		os.Exit(1)
	}
	defer conn.Close()
	var response []byte
	if err := conn.Invoke(ctx, method, &request, &response); err != nil {
		s := status.Convert(err)
		fmt.Fprintf(os.Stderr, "%s: %s\n", s.Code(), s.Message())
		os.Exit(1)
	}
	fmt.Println(hex.EncodeToString(response))
}
