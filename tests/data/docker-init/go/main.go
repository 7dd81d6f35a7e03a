package main

import (
	"fmt"
	"os"
	"os/user"
	"runtime"
)

func main() {
	name := "?"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	fmt.Printf("hello from go as %s (uid %d), %s/%s\n", name, os.Getuid(), runtime.GOOS, runtime.GOARCH)
}
