"""The node as a managed node on the real middleware, driven through the lifecycle services (ChangeState, GetState:
what `ros2 lifecycle` calls): configure loads the model and offers the services, activate takes frames, deactivate
stops taking them and keeps the objects, cleanup frees the model, and configure again applies changed parameters.
Model faults: one costs its frame only; N in a row take the node through its error transition (an ERROR on
/diagnostics, unconfigured), and configure brings it back.
"""

import fault_injecting_node as faults
import pytest
import ros_helpers as rh
from diagnostic_msgs.msg import DiagnosticStatus

pytestmark = pytest.mark.ros


def test_transitions_keep_memory_free_the_model_and_reconfigure(tmp_path):
    params = {**rh.TINY, "lifecycle.autostart": False, "input.qos": "reliable", "diagnostics.period": 0.25}
    with rh.running_node(tmp_path / "node.log", params, reliable=True) as (node, client):
        assert client.lifecycle_state() == "unconfigured"
        assert not client.clients["add_prompt"].wait_for_service(timeout_sec=1.0)  # no model, no services yet

        assert client.transition("configure") and client.lifecycle_state() == "inactive"
        client.wait_ready(node, match_image=False)
        assert client.image_pub.get_subscription_count() == 0  # inactive: not taking frames
        assert client.transition("activate") and client.lifecycle_state() == "active"
        rh.wait_until(lambda: client.image_pub.get_subscription_count() >= 1, 20.0, "the image subscription")
        client.publish_and_wait(rh.frame(0))
        assert client.call("add_prompt", object_id=3, mask=rh.mask_image(rh.rect_mask(20, 20, 50, 50))).success

        assert client.transition("deactivate") and client.lifecycle_state() == "inactive"
        rh.wait_until(lambda: client.image_pub.get_subscription_count() == 0, 20.0, "the unsubscription")
        assert [o.object_id for o in client.call("list_objects").objects] == [3]  # memory kept
        assert client.transition("activate")
        rh.wait_until(lambda: client.image_pub.get_subscription_count() >= 1, 20.0, "the image subscription")
        header, _ = client.publish_and_wait(rh.frame(1))
        assert [o.object_id for o in client.objects_for(header.stamp).objects] == [3]  # still tracked

        refused = _set(client, "model.image_size", 128)
        assert not refused.successful and "read at configure" in refused.reason
        assert client.transition("deactivate") and client.transition("cleanup")
        assert client.lifecycle_state() == "unconfigured"
        rh.wait_until(lambda: "cleaned up: model released (tracker freed" in node.log(), 10.0, "the release")
        rh.wait_until(lambda: not client.clients["list_objects"].service_is_ready(), 10.0, "the services to go")

        # other parameters, then configure again: a bigger model input and a cap of one object
        assert _set(client, "model.image_size", 128).successful
        assert _set(client, "tracker.max_objects", 1).successful
        assert client.transition("configure") and client.transition("activate")
        client.wait_ready(node)
        header, _ = client.publish_and_wait(rh.frame(2))
        assert list(client.objects_for(header.stamp).objects) == []  # a new model, nothing carried over
        assert client.call("add_prompt", object_id=1, points=[_point(30, 30)]).success
        refused = client.call("add_prompt", object_id=2, points=[_point(90, 60)])
        assert not refused.success and "max_objects=1" in refused.message, refused.message
        model = rh.wait_until(
            lambda: (
                client.diagnostics_totals().get("model", "").endswith("@128 cpu float32")
                and client.diagnostics_totals()["model"]
            ),
            10.0,
            "diagnostics of the new model",
        )
        assert "@128" in model and client.diagnostics_totals()["state"] == "active"
        assert "Traceback" not in node.log()


def test_a_failed_configure_leaves_the_node_unconfigured_and_can_be_retried(tmp_path):
    params = {**rh.TINY, "lifecycle.autostart": False, "model.device": "cuda:99"}
    with rh.running_node(tmp_path / "node.log", params) as (node, client):
        assert not client.transition("configure")
        assert client.lifecycle_state() == "unconfigured"
        assert "device 'cuda:99' is not usable" in node.log()
        assert _set(client, "model.device", "cpu").successful
        assert client.transition("configure") and client.transition("activate")
        assert client.lifecycle_state() == "active"


def test_model_faults_cost_one_frame_and_too_many_go_through_the_error_transition(tmp_path):
    params = {**rh.TINY, "input.qos": "reliable", "diagnostics.period": 0.2, "model.max_consecutive_faults": 3}
    log = tmp_path / "node.log"
    with rh.running_node(log, params, module="fault_injecting_node", reliable=True) as (node, client):
        client.publish_and_wait(rh.frame(0))
        assert client.call("add_prompt", object_id=5, mask=rh.mask_image(rh.rect_mask(20, 20, 50, 50))).success
        client.publish_and_wait(rh.frame(1))
        # one failing frame, one out of memory, each between good frames: each costs only itself
        for n, (i, marker) in enumerate(((2, faults.FAIL), (4, faults.OUT_OF_MEMORY)), start=1):
            client.publish(faults.mark(rh.frame(i), marker))
            # (the node keeps only the newest frame: the next one must not overtake the failing one)
            rh.wait_until(lambda n=n: int(client.diagnostics_totals().get("model_faults", 0)) >= n, 10.0, "a fault")
            header, _ = client.publish_and_wait(rh.frame(i + 1))
            assert [o.object_id for o in client.objects_for(header.stamp).objects] == [5]  # objects intact
        totals = rh.wait_until(
            lambda: (t := client.diagnostics_totals()) and int(t["model_faults"]) == 2 and t, 10.0, "faults counted"
        )
        assert int(totals["internal_errors"]) == 0 and totals["state"] == "active"
        assert "out of memory" in node.log() and "injected model fault" in node.log()

        # three in a row: the error transition
        for i in range(10, 13):
            client.publish(faults.mark(rh.frame(i), faults.FAIL))
            rh.wait_until(lambda i=i: int(client.diagnostics_totals().get("model_faults", 0)) >= i - 7, 10.0, "fault")

        def error_status():
            for msg in client.diagnostics.messages():
                if msg.status and msg.status[0].level == DiagnosticStatus.ERROR:
                    return msg.status[0]
            return None

        status = rh.wait_until(error_status, 20.0, "an ERROR on /diagnostics")
        assert "failed on 3 frames in a row" in status.message and "configure" in status.message
        rh.wait_until(lambda: client.lifecycle_state() == "unconfigured", 20.0, "the unconfigured state")
        assert "error transition: the model failed on 3 frames in a row" in node.log()

        # configure brings it back
        assert client.transition("configure") and client.transition("activate")
        client.wait_ready(node)
        header, _ = client.publish_and_wait(rh.frame(20))
        assert client.labels_for(header.stamp).header == header
        assert node.alive()


def _point(x, y):
    from threeam_interfaces.msg import PromptPoint

    return PromptPoint(x=float(x), y=float(y), positive=True)


def _set(client, name, value):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    if "set_parameters" not in client.clients:
        client.clients["set_parameters"] = client.node.create_client(SetParameters, f"{rh.NODE}/set_parameters")
        client.types["set_parameters"] = SetParameters
        assert client.clients["set_parameters"].wait_for_service(timeout_sec=20.0)
    if isinstance(value, bool):
        pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
    elif isinstance(value, int):
        pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    else:
        pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    return client.call("set_parameters", parameters=[Parameter(name=name, value=pv)]).results[0]
