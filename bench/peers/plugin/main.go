// The go-plugin echo plugin of bench/peers.py.
package main

import (
	plugin "github.com/hashicorp/go-plugin"

	"plugindpeers/echo"
)

type impl struct{}

func (impl) Echo(r echo.Req) echo.Req { return r }

func main() {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: echo.Handshake,
		Plugins:         map[string]plugin.Plugin{"echo": &echo.EchoPlugin{Impl: impl{}}},
	})
}
