// kube-network-policies (sigs.k8s.io/kube-network-policies, the SIG Network NetworkPolicy
// implementation: nftables + nfqueue) as a host process of the real node: its cmd/main.go trimmed
// to what the node needs, reading a kubeconfig instead of the in-cluster service account, without
// NRI (containerd 1.6 has no NRI plugin socket) and without the AdminNetworkPolicy APIs.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"

	"github.com/google/nftables"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/kube-network-policies/pkg/networkpolicy"
)

func main() { os.Exit(run()) }

func run() int {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server")
	node := flag.String("hostname-override", "", "the node's name")
	queueID := flag.Int("nfqueue-id", 100, "number of the nfqueue used")
	failOpen := flag.Bool("fail-open", false, "don't drop packets while the controller is not running")
	metrics := flag.String("metrics-bind-address", "127.0.0.1:9080", "address of the metrics server")
	cleanup := flag.Bool("cleanup", false, "delete the controller's nftables table and exit")
	klog.InitFlags(nil)
	flag.Parse()
	if *cleanup {
		return clean()
	}
	if *kubeconfig == "" || *node == "" {
		fmt.Fprintln(os.Stderr, "kube-network-policies: --kubeconfig and --hostname-override are required (or --cleanup)")
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	defer cancel()
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Errorf("kubeconfig: %v", err)
		return 1
	}
	config.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	config.ContentType = "application/vnd.kubernetes.protobuf"
	clientset, err := kubernetes.NewForConfig(config)
	if err != nil {
		klog.Errorf("client: %v", err)
		return 1
	}
	factory := informers.NewSharedInformerFactory(clientset, 0)
	http.Handle("/metrics", promhttp.Handler())
	go func() { utilruntime.HandleError(http.ListenAndServe(*metrics, nil)) }()
	controller, err := networkpolicy.NewController(
		clientset,
		factory.Networking().V1().NetworkPolicies(),
		factory.Core().V1().Namespaces(),
		factory.Core().V1().Pods(),
		nil, nil, nil, nil,
		networkpolicy.Config{
			FailOpen:            *failOpen,
			QueueID:             *queueID,
			NodeName:            *node,
			NetfilterBug1766Fix: false, // kernels 6.12+ (the VMs run 6.18)
			NRIdisabled:         true,
		},
	)
	if err != nil {
		klog.Errorf("network policy controller: %v", err)
		return 1
	}
	go func() { utilruntime.HandleError(controller.Run(ctx)) }()
	factory.Start(ctx.Done())
	<-ctx.Done()
	return clean()
}

// clean deletes the table the controller writes (inet kube-network-policies, the library's
// default name): with no controller reading its queue, its rules would drop the policed pods'
// packets. Add+Delete: no error when it is already gone.
func clean() int {
	nft, err := nftables.New()
	if err != nil {
		klog.Errorf("nftables: %v", err)
		return 1
	}
	table := &nftables.Table{Name: "kube-network-policies", Family: nftables.TableFamilyINet}
	nft.AddTable(table)
	nft.DelTable(table)
	if err := nft.Flush(); err != nil {
		klog.Errorf("deleting table inet kube-network-policies: %v", err)
		return 1
	}
	return 0
}
