// Command clearing runs the national clearing service of gongji (the switch,
// usage collection, monthly settlement and prepayment pool) and its operator
// and auditor subcommands.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := rootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "clearing:", err)
		os.Exit(1)
	}
}
