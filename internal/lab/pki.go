package lab

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// EtcdFiles are the files of the lab etcd's certificates: a CA, a server
// certificate per member (its address as SAN) and one client certificate
// the agents present (etcd runs with --client-cert-auth).
type EtcdFiles struct {
	CA, ClientCert, ClientKey string
}

// EtcdFiles returns where the lab keeps them.
func (l *Lab) EtcdFiles() EtcdFiles {
	d := filepath.Join(l.dir(), "etcd-pki")
	return EtcdFiles{CA: filepath.Join(d, "ca.pem"), ClientCert: filepath.Join(d, "client.pem"), ClientKey: filepath.Join(d, "client-key.pem")}
}

func (l *Lab) etcdServerFiles(name string) (cert, key string) {
	d := filepath.Join(l.dir(), "etcd-pki")
	return filepath.Join(d, name+".pem"), filepath.Join(d, name+"-key.pem")
}

// makeEtcdPKI writes the CA, the members' server certificates and the
// agents' client certificate.
func (l *Lab) makeEtcdPKI() error {
	f := l.EtcdFiles()
	if err := os.MkdirAll(filepath.Dir(f.CA), 0o700); err != nil {
		return err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: l.Prefix + "etcd-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(7 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	if err := writePEM(f.CA, "CERTIFICATE", caDER); err != nil {
		return err
	}
	issue := func(serial int64, cn string, ips []netip.Addr, usage x509.ExtKeyUsage, certFile, keyFile string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(7 * 24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage, x509.ExtKeyUsageClientAuth}}
		for _, ip := range ips {
			tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.AsSlice()))
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(certFile, "CERTIFICATE", der); err != nil {
			return err
		}
		return writePEM(keyFile, "EC PRIVATE KEY", kb)
	}
	for i, e := range l.Etcd {
		cert, key := l.etcdServerFiles(e.Name)
		if err := issue(int64(10+i), e.Name, []netip.Addr{e.Addr}, x509.ExtKeyUsageServerAuth, cert, key); err != nil {
			return fmt.Errorf("certificate of %s: %w", e.Name, err)
		}
	}
	return issue(2, "vxnet-agent", nil, x509.ExtKeyUsageClientAuth, f.ClientCert, f.ClientKey)
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
