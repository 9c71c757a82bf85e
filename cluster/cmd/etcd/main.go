// Command etcd is etcd's own server entry point. It lives here because etcd's main package sits in the
// go.etcd.io/etcd/v3 root module, whose go.mod replaces its sibling modules with local folders and so cannot be
// built from the module proxy; go.etcd.io/etcd/server/v3 carries the whole server, etcdmain included.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
