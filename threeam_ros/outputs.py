"""What the tracker node publishes for a tracked frame, and the messages it is built from.

One `FrameOutputs` per configured node owns the output publishers:

- `~/labels`: sensor_msgs/Image mono16 or mono8, pixel = object id; every frame
- `~/objects`: threeam_interfaces/TrackedObjectArray; every frame
- `~/detections`: vision_msgs/Detection2DArray, id and class_id = object id, bbox, score; every frame
- `~/label_info`: vision_msgs/LabelInfo (transient local), object ids -> names; when the set of objects changes
- `~/overlay` (rgb8) and `~/overlay/camera_info` (the overlay's header): publish.overlay
- `~/labels_color`: rgb8, each object in its overlay colour; publish.labels_color
- `<labels>/compressed` (png) and `<overlay>/compressed` (jpeg): sensor_msgs/CompressedImage; publish.compressed

Images nobody subscribes to are not drawn or encoded (image_transport does the same), so the overlay of a 1080p
frame costs nothing on a robot where only the labels are read. The compressed topics follow image_transport's
names and format strings, so `image_transport republish` and rqt_image_view's compressed view read them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField, RegionOfInterest
from vision_msgs.msg import (
    BoundingBox2D,
    Detection2D,
    Detection2DArray,
    Detection3D,
    Detection3DArray,
    LabelInfo,
    ObjectHypothesisWithPose,
    VisionClass,
)
from visualization_msgs.msg import Marker, MarkerArray

from threeam_interfaces.msg import TrackedObject, TrackedObjectArray
from threeam_model import viz
from threeam_model.interface import ObjectResult
from threeam_ros import conversions
from threeam_ros.conversions import ConversionError

BACKGROUND_CLASS = "background"


@dataclasses.dataclass(frozen=True)
class PublishOptions:
    """The runtime publish.* parameters, read once per frame."""

    label_encoding: str = "mono16"
    object_masks: bool = False
    overlay: bool = True
    overlay_alpha: float = 0.5
    labels_color: bool = False
    compressed: bool = False
    jpeg_quality: int = 90


@dataclasses.dataclass(frozen=True)
class OutputTopics:
    labels: str
    objects: str
    overlay: str
    detections: str
    label_info: str
    labels_color: str

    @property
    def overlay_camera_info(self) -> str:
        return f"{self.overlay}/camera_info"

    def compressed(self, image_topic: str) -> str:
        return f"{image_topic}/compressed"


class FrameOutputs:
    """The output publishers of a configured node (lifecycle publishers: silent while inactive)."""

    def __init__(self, node, topics: OutputTopics, queue_depth: int):
        qos = QoSProfile(depth=queue_depth)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        make = node.create_lifecycle_publisher
        self._node = node
        self.labels = make(Image, topics.labels, qos)
        self.objects = make(TrackedObjectArray, topics.objects, qos)
        self.detections = make(Detection2DArray, topics.detections, qos)
        self.label_info = make(LabelInfo, topics.label_info, latched)
        self.overlay = make(Image, topics.overlay, qos)
        self.overlay_camera_info = make(CameraInfo, topics.overlay_camera_info, qos)
        self.labels_color = make(Image, topics.labels_color, qos)
        self.labels_compressed = make(CompressedImage, topics.compressed(topics.labels), qos)
        self.overlay_compressed = make(CompressedImage, topics.compressed(topics.overlay), qos)
        self._all = (
            self.labels,
            self.objects,
            self.detections,
            self.label_info,
            self.overlay,
            self.overlay_camera_info,
            self.labels_color,
            self.labels_compressed,
            self.overlay_compressed,
        )
        self._label_ids: tuple[int, ...] | None = None  # the object ids of the last LabelInfo
        self._camera_info: CameraInfo | None = None  # the camera's newest, copied beside the overlay

    def destroy(self) -> None:
        for pub in self._all:
            self._node.destroy_lifecycle_publisher(pub)

    def set_camera_info(self, msg: CameraInfo) -> None:
        """The camera's own calibration (its camera_info topic), used for the overlay's camera_info."""
        self._camera_info = msg

    def announce(self, object_ids, header) -> None:
        """Publish LabelInfo if the set of tracked objects changed since the last one (transient local)."""
        ids = tuple(sorted(object_ids))
        if ids != self._label_ids:
            self.label_info.publish(label_info(ids, header))
            self._label_ids = ids

    def publish(
        self, header, rgb: np.ndarray, objects: dict[int, ObjectResult], labels: np.ndarray, opts: PublishOptions
    ) -> list[str]:
        """Publish one tracked frame; returns the problems of outputs that could not be made (the rest go out)."""
        problems = []
        try:
            label_msg = conversions.labels_to_image(labels, header, opts.label_encoding)
        except ConversionError as exc:
            label_msg = None
            problems.append(f"label image not published: {exc}")
        if label_msg is not None:
            self.labels.publish(label_msg)
            if opts.compressed and _wanted(self.labels_compressed):
                self.labels_compressed.publish(labels_to_png(label_msg))
        ordered = [obj for _, obj in sorted(objects.items())]
        array = TrackedObjectArray(header=header)
        array.objects = [tracked_object(obj, header, opts.object_masks) for obj in ordered]
        self.objects.publish(array)
        self.detections.publish(detections(ordered, header))
        self.announce(objects.keys(), header)
        overlay_out = (self.overlay, self.overlay_compressed) if opts.compressed else (self.overlay,)
        if opts.overlay and any(_wanted(p) for p in overlay_out):
            overlay = conversions.draw_overlay(rgb, labels, opts.overlay_alpha)
            if _wanted(self.overlay):
                self.overlay.publish(conversions.rgb_to_image(overlay, header))
            if opts.compressed and _wanted(self.overlay_compressed):
                self.overlay_compressed.publish(overlay_to_jpeg(overlay, header, opts.jpeg_quality))
        if opts.overlay and _wanted(self.overlay_camera_info):
            self.overlay_camera_info.publish(camera_info_for(self._camera_info, header, labels.shape))
        if opts.labels_color and _wanted(self.labels_color):
            self.labels_color.publish(conversions.rgb_to_image(viz.color_labels(labels), header))
        return problems


def _wanted(pub) -> bool:
    return pub.get_subscription_count() > 0


# ---------------------------------------------------------------------------------------------- messages


def tracked_object(obj: ObjectResult, header, with_mask: bool) -> TrackedObject:
    msg = TrackedObject(object_id=obj.obj_id, score=float(obj.score), visible=bool(obj.visible))
    msg.reacquired = obj.reacquired
    if obj.box is not None:
        x0, y0, x1, y1 = obj.box
        msg.bbox = RegionOfInterest(x_offset=x0, y_offset=y0, width=x1 - x0 + 1, height=y1 - y0 + 1)
    if with_mask:
        msg.mask = conversions.mask_to_image(obj.mask, header)
    return msg


def detections(objects: list[ObjectResult], header) -> Detection2DArray:
    """vision_msgs detections of the objects visible on this frame: id and class_id are the object id (as text),
    the box spans the object's mask pixels (centre and size in pixels), the score is the tracker's."""
    out = Detection2DArray(header=header)
    for obj in objects:
        if obj.box is None:
            continue
        x0, y0, x1, y1 = obj.box
        det = Detection2D(header=header, id=str(obj.obj_id))
        det.bbox = BoundingBox2D(size_x=float(x1 - x0 + 1), size_y=float(y1 - y0 + 1))
        # pixel centres sit on integer coordinates, so the box of pixels x0..x1 is centred on their midpoint
        det.bbox.center.position.x = (x0 + x1) / 2.0
        det.bbox.center.position.y = (y0 + y1) / 2.0
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = str(obj.obj_id)
        hypothesis.hypothesis.score = float(obj.score)
        det.results = [hypothesis]
        out.detections.append(det)
    return out


def label_info(object_ids, header) -> LabelInfo:
    """The label image's values: 0 = background, each tracked object's id = that object."""
    classes = [VisionClass(class_id=0, class_name=BACKGROUND_CLASS)]
    classes += [VisionClass(class_id=int(i), class_name=f"object {int(i)}") for i in object_ids]
    return LabelInfo(header=header, class_map=classes, threshold=0.0)


def camera_info_for(camera: CameraInfo | None, header, shape: tuple[int, int]) -> CameraInfo:
    """The overlay's camera_info: the camera's calibration with the overlay's header (RViz's Camera display pairs
    them by stamp); without one (the camera publishes none, or of another size), a nominal pinhole that spans the
    image (focal length = the larger side, centred principal point), enough to display the overlay."""
    h, w = shape
    if camera is not None and (camera.width, camera.height) == (w, h):
        msg = CameraInfo()
        for field in ("distortion_model", "d", "k", "r", "p", "binning_x", "binning_y", "roi"):
            setattr(msg, field, getattr(camera, field))
    else:
        f = float(max(w, h))
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        msg = CameraInfo(distortion_model="plumb_bob", d=[0.0] * 5)
        msg.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
        msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        msg.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    msg.header, msg.width, msg.height = header, w, h
    return msg


def labels_to_png(label_msg: Image) -> CompressedImage:
    """A label image as lossless PNG, in image_transport's compressed format (`<encoding>; png compressed`)."""
    pixels = np.frombuffer(label_msg.data, np.uint16 if label_msg.encoding == "mono16" else np.uint8)
    msg = conversions.pixels_to_png(pixels.reshape(label_msg.height, label_msg.width), label_msg.header)
    msg.format = f"{label_msg.encoding}; png compressed"
    return msg


def overlay_to_jpeg(rgb: np.ndarray, header, quality: int) -> CompressedImage:
    """The overlay as JPEG, in image_transport's compressed format (`rgb8; jpeg compressed bgr8`)."""
    msg = conversions.rgb_to_compressed(rgb, header, "jpeg", quality)
    msg.format = "rgb8; jpeg compressed bgr8"
    return msg


# ---------------------------------------------------------------------------------------------- per-object 3D


class Object3DOutputs:
    """~/objects_3d (Detection3DArray), ~/object_points (PointCloud2: x, y, z, id) and ~/markers (a box and an id
    label per object, for RViz), in one frame: the world frame where there is one, else the camera's."""

    def __init__(self, node, queue_depth: int):
        qos = QoSProfile(depth=queue_depth)
        make = node.create_lifecycle_publisher
        self._node = node
        self.detections = make(Detection3DArray, "~/objects_3d", qos)
        self.points = make(PointCloud2, "~/object_points", qos)
        self.markers = make(MarkerArray, "~/markers", qos)
        self._shown: set[int] = set()  # marker ids RViz holds, so the ones of vanished objects get deleted

    def destroy(self) -> None:
        for pub in (self.detections, self.points, self.markers):
            self._node.destroy_lifecycle_publisher(pub)

    def publish(self, header, objects: dict) -> None:
        ordered = [obj for _, obj in sorted(objects.items())]
        self.detections.publish(detections_3d(ordered, header))
        self.points.publish(object_cloud(ordered, header))
        self.markers.publish(object_markers(ordered, header, self._shown))
        self._shown = {obj.obj_id for obj in ordered}


def detections_3d(objects, header) -> Detection3DArray:
    """vision_msgs 3D detections: id and class_id = object id, the box (axis-aligned: identity orientation) and the
    tracker's score; the hypothesis pose is the object's centroid."""
    out = Detection3DArray(header=header)
    for obj in objects:
        det = Detection3D(header=header, id=str(obj.obj_id))
        _set_point(det.bbox.center.position, obj.box_center)
        det.bbox.center.orientation.w = 1.0
        det.bbox.size.x, det.bbox.size.y, det.bbox.size.z = (float(v) for v in obj.box_size)
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = str(obj.obj_id)
        hypothesis.hypothesis.score = obj.score
        _set_point(hypothesis.pose.pose.position, obj.centroid)
        hypothesis.pose.pose.orientation.w = 1.0
        det.results = [hypothesis]
        out.detections.append(det)
    return out


def object_cloud(objects, header) -> PointCloud2:
    """Every object's downsampled points in one cloud: float32 x, y, z and uint32 id (16 bytes a point)."""
    n = sum(len(obj.points) for obj in objects)
    data = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("id", "<u4")])
    k = 0
    for obj in objects:
        m = len(obj.points)
        for axis, name in enumerate("xyz"):
            data[name][k : k + m] = obj.points[:, axis]
        data["id"][k : k + m] = obj.obj_id
        k += m
    fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, name in enumerate("xyz")]
    fields.append(PointField(name="id", offset=12, datatype=PointField.UINT32, count=1))
    msg = PointCloud2(header=header, height=1, width=n, fields=fields, is_bigendian=False, point_step=16)
    msg.row_step, msg.is_dense = 16 * n, True
    msg.data = data.tobytes()
    return msg


def object_markers(objects, header, shown: set[int]) -> MarkerArray:
    """A wire box in the object's overlay colour and its id above it; DELETE for the objects shown before and gone."""
    out = MarkerArray()
    for obj in objects:
        r, g, b = (c / 255.0 for c in conversions.object_color(obj.obj_id))
        box = Marker(header=header, ns="threeam_boxes", id=obj.obj_id, type=Marker.CUBE, action=Marker.ADD)
        _set_point(box.pose.position, obj.box_center)
        box.pose.orientation.w = 1.0
        box.scale.x, box.scale.y, box.scale.z = (max(float(v), 1e-3) for v in obj.box_size)
        box.color.r, box.color.g, box.color.b, box.color.a = r, g, b, 0.4
        label = Marker(header=header, ns="threeam_ids", id=obj.obj_id, type=Marker.TEXT_VIEW_FACING)
        label.action = Marker.ADD
        _set_point(label.pose.position, obj.box_center)
        label.pose.orientation.w = 1.0
        label.scale.z = max(float(obj.box_size.max()) * 0.3, 1e-3)
        label.color.r = label.color.g = label.color.b = label.color.a = 1.0
        label.text = str(obj.obj_id)
        out.markers += [box, label]
    for gone in sorted(shown - {obj.obj_id for obj in objects}):
        for ns in ("threeam_boxes", "threeam_ids"):
            out.markers.append(Marker(header=header, ns=ns, id=gone, action=Marker.DELETE))
    return out


def _set_point(point, xyz) -> None:
    point.x, point.y, point.z = (float(v) for v in xyz)
