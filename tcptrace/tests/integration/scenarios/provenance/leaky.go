// A Go client that leaks: it dials 127.0.0.1:PORT N times from
// openBrokerConnection and never closes. Usage: leaky PORT N
package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

var held []net.Conn

//go:noinline
func openBrokerConnection(port string) net.Conn {
	c, err := net.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	return c
}

//go:noinline
func reconnectLoop(port string, n int) {
	for i := 0; i < n; i++ {
		held = append(held, openBrokerConnection(port))
	}
}

func main() {
	n, _ := strconv.Atoi(os.Args[2])
	reconnectLoop(os.Args[1], n)
	fmt.Printf("ready %d\n", os.Getpid())
	for {
		time.Sleep(time.Hour)
	}
}
