// Package echo is the interface both ends of the go-plugin peer benchmark share (bench/peers.py).
package echo

import (
	"net/rpc"

	plugin "github.com/hashicorp/go-plugin"
)

// Req is the small payload: the same fields as plugind's bench dict.
type Req struct {
	Method  string
	Path    string
	Headers map[string]string
	N       int
}

// Echoer answers a call with its argument.
type Echoer interface {
	Echo(r Req) Req
}

// Handshake is what host and plugin agree on.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "PLUGIND_PEER_BENCH",
	MagicCookieValue: "echo",
}

// RPCClient is the host side's stub.
type RPCClient struct{ client *rpc.Client }

// Echo calls the plugin.
func (c *RPCClient) Echo(r Req) Req {
	var out Req
	if err := c.client.Call("Plugin.Echo", r, &out); err != nil {
		panic(err)
	}
	return out
}

// RPCServer is the plugin side's net/rpc receiver.
type RPCServer struct{ Impl Echoer }

// Echo serves one call.
func (s *RPCServer) Echo(r Req, out *Req) error {
	*out = s.Impl.Echo(r)
	return nil
}

// EchoPlugin is the go-plugin glue.
type EchoPlugin struct{ Impl Echoer }

// Server returns the plugin side.
func (p *EchoPlugin) Server(*plugin.MuxBroker) (interface{}, error) { return &RPCServer{Impl: p.Impl}, nil }

// Client returns the host side.
func (EchoPlugin) Client(b *plugin.MuxBroker, c *rpc.Client) (interface{}, error) {
	return &RPCClient{client: c}, nil
}
