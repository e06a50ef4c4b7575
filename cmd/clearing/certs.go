package main

import (
	"fmt"
	"gongji/config"
	"time"

	"github.com/spf13/cobra"

	"gongji/internal/tlsconf"
)

func certsCmd() *cobra.Command {
	root := &cobra.Command{Use: "certs", Short: "mutual TLS certificates for the federation"}
	var (
		out                          string
		validity                     time.Duration
		force                        bool
		clearingHosts, provinceHosts []string
	)
	initCmd := &cobra.Command{
		Use:   "init --out DIR",
		Short: "make a CA, the clearing server certificate, one certificate per provincial unit and an operator certificate",
		Long: "init writes into DIR: ca.pem/ca-key.pem, clearing.pem (identity gongji:clearing), province-XX0000.pem for\n" +
			"each of the 32 provincial units (gongji:province:XX0000, server and client use) and operator.pem\n" +
			"(gongji:operator). Existing files that fit are kept, so running it twice is safe; --force replaces all.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("--out is required")
			}
			if err := tlsconf.Init(out, tlsconf.InitOptions{Validity: validity, Force: force, ClearingHosts: clearingHosts, ProvinceHosts: provinceHosts}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "certificates in %s\n", out)
			return nil
		},
	}
	initCmd.Flags().StringVar(&out, "out", "", "directory to write the certificates to")
	initCmd.Flags().DurationVar(&validity, "validity", 365*24*time.Hour, "validity of each leaf certificate")
	initCmd.Flags().BoolVar(&force, "force", false, "replace every existing file, the CA included")
	config.Operands(initCmd, "out", "force")
	initCmd.Flags().StringSliceVar(&clearingHosts, "clearing-host", nil, "extra DNS name or IP for the clearing certificate (repeatable)")
	initCmd.Flags().StringSliceVar(&provinceHosts, "province-host", nil, "extra DNS name or IP for every province certificate (repeatable)")
	root.AddCommand(initCmd)
	return root
}
