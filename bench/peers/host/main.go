// The go-plugin host of bench/peers.py: reads commands on stdin, answers one JSON line each.
//
//	cold N     N times: start the plugin, dispense, first call, kill; the times in ns
//	seq N      N sequential calls on the long-lived plugin; each call's time in ns
//	par N K    N calls from K goroutines; the wall time in ns
//	pid        the long-lived plugin's pid
package main

import (
	"bufio"
	"encoding/json"
	"io/ioutil"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"

	"plugindpeers/echo"
)

var small = echo.Req{Method: "GET", Path: "/api/items", Headers: map[string]string{"x-user": "bob"}, N: 1}

func start(argv []string) (*plugin.Client, echo.Echoer) {
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  echo.Handshake,
		Plugins:          map[string]plugin.Plugin{"echo": &echo.EchoPlugin{}},
		Cmd:              exec.Command(argv[0], argv[1:]...),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolNetRPC},
		Logger:           hclog.New(&hclog.LoggerOptions{Output: ioutil.Discard, Level: hclog.Error}),
	})
	rpcClient, err := client.Client()
	if err != nil {
		panic(err)
	}
	raw, err := rpcClient.Dispense("echo")
	if err != nil {
		panic(err)
	}
	return client, raw.(echo.Echoer)
}

func main() {
	argv := os.Args[1:] // the plugin's command line (taskset -c CPU plugin)
	out := json.NewEncoder(os.Stdout)
	in := bufio.NewScanner(os.Stdin)
	var client *plugin.Client
	var e echo.Echoer
	defer func() {
		if client != nil {
			client.Kill()
		}
	}()
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		arg := func(i int) int {
			v, err := strconv.Atoi(f[i])
			if err != nil {
				panic(err)
			}
			return v
		}
		switch f[0] {
		case "cold":
			times := []int64{}
			for i := 0; i < arg(1); i++ {
				t0 := time.Now()
				c, ee := start(argv)
				ee.Echo(small)
				times = append(times, int64(time.Since(t0)))
				c.Kill()
			}
			out.Encode(times)
		case "pid":
			if client == nil {
				client, e = start(argv)
				e.Echo(small)
			}
			out.Encode(client.ReattachConfig().Pid)
		case "seq":
			times := make([]int64, 0, arg(1))
			for i := 0; i < arg(1); i++ {
				t0 := time.Now()
				e.Echo(small)
				times = append(times, int64(time.Since(t0)))
			}
			out.Encode(times)
		case "par":
			n, k := arg(1), arg(2)
			var wg sync.WaitGroup
			t0 := time.Now()
			for j := 0; j < k; j++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < n/k; i++ {
						e.Echo(small)
					}
				}()
			}
			wg.Wait()
			out.Encode(int64(time.Since(t0)))
		case "quit":
			return
		}
	}
}
