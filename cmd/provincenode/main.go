// Command provincenode runs one province node of gongji: the authority over the
// sharing relationships and quotas of its province's insured people.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := rootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "provincenode:", err)
		os.Exit(1)
	}
}
